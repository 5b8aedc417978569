"""What the server side raises on purpose: one tree. Each error names what it is about with a
`code` (the API's error code) and the `param` it concerns; its kind says how the HTTP layer
answers it, in one place (`api_shim/errors.py`). Errors live beside the code that raises them;
this module holds the kinds and draws the tree.

ServerError
├── NotFound (LookupError)               404
│   ├── RunNotFound                      run_table.py
│   ├── TenantNotFound, KeyNotFound      tenants.py
│   └── RevisionNotFound                 revisions.py
├── Conflict                             409
│   ├── AlreadyExists                    store.py (a tenant name)
│   ├── ThreadBusy                       threads.py (multitask_strategy `reject`)
│   ├── TransitionRefused                run_table.py (the table, a lease or a cancel forbids it)
│   ├── RunNotAwaitingApproval           run_table.py
│   └── AlreadyDecided                   run_table.py
├── Invalid (ValueError)                 422
│   ├── UnknownCall                      run_table.py (a decision for a call nobody waits on)
│   ├── PublishError                     revisions.py
│   ├── CronError                        cron.py (cron expression, time zone)
│   └── TargetRefused                    webhook_send.py (a webhook URL runrelay won't call)
├── Unauthorized                         401
│   └── StreamTokenError                 stream_tokens.py
│       ├── TokenInvalid
│       └── TokenExpired
└── Fenced                               the worker's own signals; never reach a client
    ├── LeaseLost                        eventlog.py (another worker holds the run now)
    └── SeqConflict                      eventlog.py (an append not above the log's end)

`LifecycleError` (run_table.py) groups the lifecycle's own across these kinds.
"""

from __future__ import annotations


class ServerError(Exception):
    """Root of the server side's errors."""

    code = "server_error"
    param: str | None = None


class NotFound(ServerError, LookupError):
    code = "not_found"


class Conflict(ServerError):
    code = "conflict"


class Invalid(ServerError, ValueError):
    code = "validation_error"


class Unauthorized(ServerError):
    code = "unauthorized"


class Fenced(ServerError):
    """A writer that lost its right to write (its lease, its place in the log)."""

    code = "fenced"
