"""The Max for Live device's JavaScript tests (max_for_live/tests/*.test.js), run with Node's own
test runner so that the project's single test command covers them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import require_tool

REPO = Path(__file__).resolve().parents[1]


def test_node_tests_pass():
    node = require_tool("node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(re.match(r"v(\d+)", version).group(1))
    assert major >= 18, f"node {version} has no built-in test runner (node --test needs Node 18 or later)"
    run = subprocess.run([node, "--test", "max_for_live/tests/"], cwd=REPO, capture_output=True, text=True, timeout=600)
    summary = "\n".join(line for line in run.stdout.splitlines() if line.startswith(("not ok", "# tests", "# pass", "# fail")))
    assert run.returncode == 0, f"node --test failed:\n{summary}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert re.search(r"^# fail 0$", run.stdout, re.M), summary
    assert int(re.search(r"^# pass (\d+)$", run.stdout, re.M).group(1)) >= 40, summary
