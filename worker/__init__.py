"""The Celery worker: runs jobs with core.customize. It may import torch and core; the API never imports it."""
