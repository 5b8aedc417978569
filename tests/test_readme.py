"""The README's Python examples run as they are, against the real shim and worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TenantKey

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_an_example_per_sdk_surface() -> None:
    text = "\n".join(BLOCKS)
    for call in (
        "agents.invoke(",
        "agents.ainvoke(",
        "agents.stream(",
        "agents.run(",
        "agents.run_async(",
        "agents.stream_async(",
        "shortcuts.resolve(",
        "shortcuts.list(",
        "client.shortcut(",
        "runs.events(",
        "last_event_id=",
    ):
        assert call in text, call


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index: int, api: str, tenant: TenantKey) -> None:
    env = {**os.environ, "RUNRELAY_API_KEY": tenant.key, "RUNRELAY_BASE_URL": api}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, f"example {index}:\n{BLOCKS[index]}\n{done.stderr}"
