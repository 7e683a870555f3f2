"""The daemon takes its tempo from a real MIDI clock: jackd (dummy backend) + jack_midi_clock
-> the daemon's virtual "STAGE Bridge" port; /stage/status reports it (tempo_source midi)."""

from __future__ import annotations

import time

import pytest

import jackutil
from conftest import require_tool
from daemon_util import Daemon, OscDump
from test_midiclock_jack import midi_clock, roll

pytestmark = pytest.mark.slow  # a whole daemon and a real JACK MIDI clock

BPM = 128.0


@pytest.fixture
def jack():
    for tool in ("jackd", "jack_midi_clock", "jack_lsp", "jack_connect", "jack_transport", "oscsend", "oscdump"):
        require_tool(tool)
    with jackutil.jack_server() as server:
        roll(server)
        yield server


def test_status_reports_the_midi_clock_tempo(jack, tmp_path):
    with OscDump() as dump, midi_clock(jack, BPM) as source:
        daemon = Daemon(tmp_path / "home", dump.port, midi=True, extra_args=["--midi-api", "jack"],
                        env=jackutil.jack_env(jack)).start()
        try:
            target = jackutil.wait_for_port(jack, "STAGE Bridge:", timeout=20)
            assert jackutil.jack_cmd(jack, "jack_connect", source, target).returncode == 0
            connected = time.monotonic()
            time.sleep(2.0)  # the criterion: within 0.1 BPM after 2 s of ticks
            seen = []
            while time.monotonic() - connected < 15.0:  # a dummy-driver xrun can spoil one window
                mark = dump.mark()
                daemon.send("/stage/status")
                msg = dump.wait_for(lambda m: m.address == "/stage/status", timeout=5, since=mark)
                state, queue, bpm, source_name = msg.args[:4]
                assert source_name == "midi", msg.args
                seen.append(bpm)
                if abs(bpm - BPM) <= 0.1:
                    break
                time.sleep(0.25)
            assert abs(seen[-1] - BPM) <= 0.1, (seen, jack.xruns)
            # a request without bpm takes the MIDI tempo
            mark = dump.mark()
            daemon.send("/stage/generate", "sssiss", "midi-job", "", "drums", 1, "context_mode", "click")
            done = dump.wait_job_end("midi-job", timeout=120, since=mark)
            assert done.address == "/stage/job/done", done.args
            assert "bpm" in done.args[1] and abs(float(done.args[1].split(".drums.")[1].split("bpm")[0]) - BPM) < 0.2
        finally:
            assert daemon.stop() == 0, daemon.log_text()
