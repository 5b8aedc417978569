"""Deterministic tools for the demo agents: same input, same answer, no network."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from pydantic import Field

from runrelay.tools import tool


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
