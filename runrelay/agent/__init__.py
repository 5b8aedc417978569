"""The agent core: the loop, one model turn, providers, tools, MCP servers, middleware, history,
the agents config and registry, and the one agent-run driver that the worker and the embedded
runtime both call. It imports no Celery, Redis, database or web framework.

Public: `tools` (`@tool`), `middleware`, `run_context` (progress, suggestions), `config`
(the agents file), `providers`, `events` (the event protocol). Modules named `_x` are internal.
"""
