"""The editq worker: Celery app, pipeline steps, provider adapters and the webhook receiver."""
