"""One router per resource: jobs, teachers, students, health."""
