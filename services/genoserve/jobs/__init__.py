"""Bulk jobs: Celery app and tasks, the job store, job kinds, artifact paths."""
