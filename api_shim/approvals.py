"""`POST /v1/runs/{id}/approvals`: decide on a tool call a paused run waits for.

The run paused in `requires_action` with no worker; each decision is recorded by the lifecycle,
and the last one puts the run back at the head of its tenant's queue, to be resumed from its
checkpoint by whichever worker takes it (see `runrelay.server.lifecycle`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from api_shim.auth import Caller
from api_shim.runs import own_run, paused, run_object
from api_shim.state import state_of
from runrelay.server.approvals import Decision
from runrelay.types import ApprovalDecision, RunObject, RunStatus

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.post(
    "/{run_id}/approvals",
    response_model=RunObject,
    responses={
        404: {"description": "no such run for this tenant"},
        409: {"description": "the run is not waiting for approval, or the call was decided"},
        422: {"description": "the call id is not one the run waits on"},
    },
    summary="Approve or reject a tool call of a paused run",
)
async def decide(
    request: Request, caller: Caller, run_id: str, body: ApprovalDecision
) -> RunObject:
    """Record the decision. Once every call the run waits on is decided, the run goes back to
    `queued` and resumes; a rejected call is reported to the model with `reason`. Sending the
    same decision again is harmless; a contrary one is a 409."""
    state = state_of(request)
    run = await own_run(request, caller, run_id)
    if run.status is RunStatus.RUNNING:
        # A client reacting to `approval_required` at once may beat the worker's pause write.
        await paused(state, run.id)
    decided = await state.lifecycle.decide(
        run.id, Decision(call_id=body.call_id, approved=body.approved, reason=body.reason)
    )
    return run_object(decided.run)
