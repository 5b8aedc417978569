"""Deterministic tools for the demo agents: same input, same answer, no network."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from pydantic import Field

from runrelay.agent.run_context import report_progress, suggest
from runrelay.agent.tools import current_tool_call_id, tool


def _score(company: str) -> int:
    digest = hashlib.sha256(company.strip().lower().encode()).digest()
    return 300 + int.from_bytes(digest[:2], "big") % 551


@tool(description="Look up a company's credit score (300-850) and rating band.", timeout_s=10)
def lookup_credit_score(
    company: Annotated[str, Field(description="the company's legal name", min_length=1)],
) -> dict[str, Any]:
    score = _score(company)
    band = "low risk" if score >= 700 else "medium risk" if score >= 580 else "high risk"
    return {"company": company, "score": score, "band": band}


@tool(description="Fetch a company's headline financials for a year.", timeout_s=10)
def get_financials(
    company: Annotated[str, Field(description="the company's legal name", min_length=1)],
    year: Annotated[int, Field(ge=1990, le=2100)] = 2024,
) -> dict[str, Any]:
    base = _score(company) * 1_000_000
    return {
        "company": company,
        "year": year,
        "revenue": base,
        "debt_to_equity": round(base % 97 / 40, 2),
    }


@tool(description="Read the available balance of one of the company's accounts.", timeout_s=10)
def get_account_balance(
    account: Annotated[str, Field(description="the account's IBAN or name", min_length=1)],
) -> dict[str, Any]:
    return {"account": account, "available": float(_score(account) * 1000), "currency": "EUR"}


@tool(
    description="Send a payment from the company's operating account. A person must approve "
    "every payment before it is sent.",
    approval_mode="always_require",
    max_invocations=3,
    timeout_s=30,
)
def send_payment(
    payee: Annotated[str, Field(description="who receives the money", min_length=1)],
    amount: Annotated[float, Field(description="amount in EUR", gt=0, le=1_000_000)],
    reference: Annotated[str, Field(description="the payment's reference", max_length=140)] = "",
) -> dict[str, Any]:
    report_progress("submitting the payment to the bank", progress=0, total=2)
    # The tool call id makes the confirmation the same if a resumed run repeats the call.
    call_id = current_tool_call_id.get() or f"{payee}:{amount}:{reference}"
    confirmation = hashlib.sha256(call_id.encode()).hexdigest()[:12].upper()
    report_progress("payment accepted", progress=2, total=2)
    suggest("Show today's payments", "List the payments sent today")
    return {"status": "sent", "payee": payee, "amount": amount, "confirmation": confirmation}
