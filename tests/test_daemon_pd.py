"""A second, independent OSC implementation talks to the daemon: headless Pure Data (vanilla
[netsend -u -b] / [oscformat] / [netreceive -u -b] / [oscparse], as a Max patch would use
[udpsend] / [udpreceive]). The patch is tests/fixtures/pd/client.pd.

Not `pd -batch`: batch mode runs logical time as fast as the CPU allows, so the patch's
[delay] guard would fire at once and nothing would wait for the network.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from conftest import require_tool
from daemon_util import Daemon, free_udp_port

pytestmark = pytest.mark.slow  # a whole daemon and a real Pure Data client

PATCH = Path(__file__).parent / "fixtures" / "pd" / "client.pd"


def _received(stderr: str) -> list[list[str]]:
    """What the patch printed with [print stage-rx], as atoms (OSC address parts first)."""
    return [line.split(": ", 1)[1].split() for line in stderr.splitlines() if line.startswith("stage-rx: ")]


def test_pure_data_client_pings_and_generates(tmp_path):
    pd = require_tool("pd")
    reply_port = free_udp_port()
    daemon = Daemon(tmp_path / "home", reply_port).start()
    try:
        cmd = [pd, "-nogui", "-nosound", "-nomidi", "-nrt", "-noprefs", "-stderr",
               "-send", f"; stage-listen {reply_port}; stage-connect {daemon.osc_port}; stage-go bang",
               "-open", str(PATCH)]
        try:  # the patch quits by itself after the second job's done message (or after 60 s)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"Pd did not quit:\n{e.stderr}\n--- daemon ---\n{daemon.log_text()}") from None
    finally:
        rc = daemon.stop()
    report = f"Pd printed:\n{proc.stderr}\n--- daemon ---\n{daemon.log_text()}"
    assert proc.returncode == 0, report
    assert rc == 0, report
    got = _received(proc.stderr)
    assert ["stage", "pong", "pd1"] in got, report
    assert ["stage", "job", "accepted", "pd1gen", "0"] in got, report
    assert any(m[:4] == ["stage", "job", "accepted", "pd2gen"] for m in got), report
    assert not [m for m in got if m[:3] == ["stage", "job", "error"]], report
    done = {m[3]: m[4:] for m in got if m[:3] == ["stage", "job", "done"]}
    assert set(done) == {"pd1gen", "pd2gen"}, report
    outbox = (tmp_path / "home" / "outbox").resolve()
    for job, instrument in (("pd1gen", "drums"), ("pd2gen", "bass")):
        (path,) = done[job]
        wav = Path(path)
        assert wav.parent == outbox and wav.name == f"{job}.{instrument}.120bpm.take1.wav"
        info = sf.info(str(wav))
        assert (info.frames, info.samplerate) == (4 * 60 * 48000 // 120, 48000)  # 1 bar of 4/4, click-mode rate
        assert wav.with_suffix(".json").is_file()
