"""The `runrelay` command: service processes, administration, client commands and `dev`."""

from runrelay.cli._main import main

__all__ = ["main"]
