"""The agent loop embedded in your own process (the Facio SDK's shape): `Runrelay.from_config`,
file sessions, provider preflight. No Redis, Celery, database or server."""

from runrelay.embedded._run import RunResult, ToolUse
from runrelay.embedded._runtime import Runrelay

__all__ = ["RunResult", "Runrelay", "ToolUse"]
