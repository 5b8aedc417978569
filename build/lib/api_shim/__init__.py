"""The HTTP side of runrelay: FastAPI app, auth, SSE replay hub."""
