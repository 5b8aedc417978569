"""The Celery side of runrelay: app and config, thin tasks, the asyncio runtime, leases."""
