"""Settings that would break crash recovery are refused at start-up, naming the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runrelay.server.settings import Settings


def test_visibility_timeout_shorter_than_a_run_is_refused() -> None:
    with pytest.raises(ValidationError, match="RUNRELAY_BROKER_VISIBILITY_TIMEOUT_S"):
        Settings(broker_visibility_timeout_s=3600, max_run_timeout_s=7200)


def test_default_visibility_timeout_outlasts_the_longest_allowed_run() -> None:
    settings = Settings()
    assert settings.broker_visibility_timeout_s > settings.max_run_timeout_s
    assert settings.max_run_timeout_s >= settings.run_timeout_s
