"""The server side shared by `worker/` and `api_shim/`: the run lifecycle, the database (store,
tables, migrations), the Redis event log, keys and Lua scripts, quotas and the thread gate.

Needs the `server` extra; `import runrelay` never imports this package.
"""
