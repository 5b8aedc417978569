"""What a test needs from the machine (PostgreSQL, Chromium, a file-descriptor limit): without it
the test skips on a developer's machine, and fails under CI (`CI` set), which must run them all."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(missing: str) -> NoReturn:
    """The test cannot run here because of `missing`: skip it, or fail it under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test, but {missing}")
    pytest.skip(missing)
