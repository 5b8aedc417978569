"""runrelay: run LLM agents at scale.

`pip install runrelay` gives the client side; the server side (worker, HTTP shim) comes with the
`server` extra.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
