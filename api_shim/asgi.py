"""ASGI entry point for servers that import an app by name (`uvicorn api_shim.asgi:app`)."""

from api_shim.app import create_app
from runrelay.server.settings import Settings

app = create_app(Settings())
