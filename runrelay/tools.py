"""Public import path of the tool decorator (`from runrelay.tools import tool`); the tools live
in `runrelay.agent.tools`."""

from runrelay.agent.tools import Tool, ToolError, current_run_id, current_tool_call_id, tool

__all__ = ["Tool", "ToolError", "current_run_id", "current_tool_call_id", "tool"]
