"""The README's Python examples run as they are, against the real shim and worker, each in a
scratch directory holding a copy of the demo agents config as `agents.yaml` (for the embedded
loop's examples)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runrelay.server.settings import DEMO_AGENTS_CONFIG
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
        "Runrelay.from_config(",
        "hooks=[",
        "approve=",
        "schedules.create(",
        "schedules.trigger(",
    ):
        assert call in text, call


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(
    index: int, api: str, tenant: TenantKey, tmp_path: Path
) -> None:
    env = {**os.environ, "RUNRELAY_API_KEY": tenant.key, "RUNRELAY_BASE_URL": api}
    shutil.copy(DEMO_AGENTS_CONFIG, tmp_path / "agents.yaml")
    done = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, f"example {index}:\n{BLOCKS[index]}\n{done.stderr}"
