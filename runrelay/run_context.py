"""Public import path of what a tool or middleware can add to its run's log (progress, custom
events, suggestions); it lives in `runrelay.agent.run_context`."""

from runrelay.agent.run_context import Suggestion, emit_custom, report_progress, suggest

__all__ = ["Suggestion", "emit_custom", "report_progress", "suggest"]
