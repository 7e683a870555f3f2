"""A Node script driven over stdin/stdout, one JSON request and one JSON answer per line: how the
Python tests talk to the device's logic (max_for_live/tests/contract_driver.js) and to the Max
simulation (max_for_live/sim/driver.js)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


class NodeLines:
    def __init__(self, node: str, script: Path, what: str = "the Node driver"):
        self.what = what
        self.proc = subprocess.Popen([node, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, **request: Any) -> dict[str, Any]:
        """Send one request; its answer, or RuntimeError with the script's `error` (or its stderr if it exited)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.what} exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
