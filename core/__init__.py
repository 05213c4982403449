"""clipforge's ML core: teachers, synthesis, distillation and export. Pure torch; no web, database or queue code."""
