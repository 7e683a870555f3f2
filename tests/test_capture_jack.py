"""Capture mode against real peers: jackd (dummy backend, its own server name), PortAudio's JACK
host API (sounddevice), jack_midi_clock following the JACK transport, and a JACK client playing
a FluidSynth-rendered song at the transport's frame (capture_rig.SongPlayer).

The song's bar b starts at transport frame b * BAR_FRAMES, which is where the clock says bar b
starts; so a capture whose reply says "bar b" must hold the song from that frame on. Checked by
cross-correlating the captured context against the song: within one JACK period plus three
times the mapping error the daemon measured. The dummy driver xruns now and then on shared CPUs
(and re-anchors its cycle clock after each; PortAudio reports each as an overflow, so the
capture says dropout): the check is made on a capture with no xrun around its first bar line
(what places it), taking captures until one is, for up to CLEAN_WINDOW_DEADLINE_S.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import jackutil
from capture_rig import BAR_FRAMES, BPM, SR, locate_in_song, player_process, render_song
from conftest import require_tool
from test_midiclock_jack import midi_clock

pytestmark = pytest.mark.slow  # a real jackd, jack_midi_clock, PortAudio and (below) a whole daemon

PERIOD = 256
CLEAN_WINDOW_DEADLINE_S = 90.0   # how long to look for a capture whose window saw no xrun


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> tuple[np.ndarray, Path]:
    require_tool("fluidsynth")
    path = tmp_path_factory.mktemp("song") / "song.wav"
    return render_song(path), path


@pytest.fixture(scope="module")
def jack():
    for tool in ("jackd", "jack_midi_clock", "jack_lsp", "jack_connect", "jack_transport"):
        require_tool(tool)
    try:
        import jack as _  # noqa: F401  (JACK-Client, the song player)
        import sounddevice as _sd  # noqa: F401
    except (ImportError, OSError) as e:
        if os.environ.get("STAGE_BRIDGE_CI") == "1":
            pytest.fail(f"capture tests need JACK-Client and sounddevice in CI: {e}")
        pytest.skip(f"JACK-Client or sounddevice missing: {e}")
    with jackutil.jack_server(period=PERIOD) as server:
        yield server
    # `portaudio()` below ends PortAudio before each server stops; sounddevice starts it on import
    # (sounddevice.py 0.5: `_initialize()` at module level, "automatically called with the import
    # sounddevice statement"), so start it again now the server is gone: later tests find the
    # module as imported
    import sounddevice as sd

    if not sd._initialized:
        sd._initialize()


@contextlib.contextmanager
def portaudio():
    """sounddevice with PortAudio (re)initialised now, so it sees the running JACK server, and
    terminated before the server stops (PortAudio aborts the process if JACK vanishes first)."""
    import sounddevice as sd

    if sd._initialized:
        sd._terminate()
    sd._initialize()
    try:
        yield sd
    finally:
        sd._terminate()


def transport(server: str, *commands: str) -> None:
    res = jackutil.jack_cmd(server, "jack_transport", input="\n".join((*commands, "quit")) + "\n")
    assert res.returncode == 0, res.stderr


def connect(server: str, source: str, target: str) -> None:
    res = jackutil.jack_cmd(server, "jack_connect", source, target)
    assert res.returncode == 0, res.stderr


BAR_S = BAR_FRAMES / SR


def start_was_clean(server, asked: float, bars: int) -> bool:
    """No xrun near the capture's first bar line, give or take what places it: the buffers and
    ticks within barclock.SPAN_S of it (asked at `asked`, the bars end within a bar before).
    An xrun elsewhere in the bars (reported as a dropout) does not move their first sample."""
    from stage_bridge.bridge.barclock import SPAN_S

    first = asked - bars * BAR_S
    return not any(first - BAR_S - SPAN_S - 0.2 <= t <= first + SPAN_S + 0.2 for t in server.xruns)


def test_captured_bars_start_on_the_clocks_downbeat(jack, song):
    """In process: Capture + MidiClockInput + barclock.locate_bars, the daemon's own pieces."""
    from stage_bridge.audio.timing import bars_to_samples
    from stage_bridge.bridge.barclock import SPAN_S, BarSpan, locate_bars
    from stage_bridge.bridge.capture import Capture, find_device
    from stage_bridge.bridge.midiclock import ClockTracker, MidiClockInput

    song, song_path = song
    transport(jack, "stop", "locate 0")
    with player_process(jack, song_path, jackutil.jack_env(jack)) as player, midi_clock(jack, BPM), portaudio():
        capture = Capture(find_device("system@JACK"), seconds=60)
        tracker = ClockTracker()
        clock_in = MidiClockInput("jack_midi_clock", api="jack", tracker=tracker)
        try:
            assert capture.sample_rate == SR
            for i, port in enumerate(player.outs):
                connect(jack, port, jackutil.wait_for_port(jack, f"PortAudio:in_{i}"))
            transport(jack, "play")
            seen, clean, deadline = [], None, time.monotonic() + CLEAN_WINDOW_DEADLINE_S
            while clean is None and time.monotonic() < deadline:
                assert jackutil.wait_until(lambda: len(tracker.run_ticks()[1]) > 96 * 3 + 24, 20), "no clock run"
                span = locate_bars(2, 4, 4, *tracker.run_ticks(), *capture.arrivals(), capture.sample_rate,
                                   bpm=tracker.bpm)
                if not isinstance(span, BarSpan):       # the input's dropouts left too little to fit
                    seen.append(span)
                    time.sleep(1.0)
                    continue
                assert capture.wait_for(span.start + span.length, 2.0)
                audio, dropouts = capture.read(span.start, span.length)
                lag = locate_in_song(audio, song, (span.bar - 1) * BAR_FRAMES)
                seen.append((lag, span, len(dropouts)))
                # the input's own dropout reports (one per xrun it saw) near what places the first bar line
                if any(abs(d.sample - span.start) <= (SPAN_S + 0.2) * SR for d in list(capture.dropouts)):
                    time.sleep(1.0)
                    continue
                clean = lag, span
            assert clean is not None, f"no capture without an xrun in {CLEAN_WINDOW_DEADLINE_S} s: {seen}"
            lag, span = clean
            assert abs(lag) <= PERIOD + 3 * span.error, seen
            assert span.bpm == pytest.approx(BPM, abs=0.1)
            assert audio.shape == (capture.channels, span.length)
            # exactly two bars at the fitted tempo (120.01 bpm is 191984 samples, not 2 * BAR_FRAMES)
            assert span.length == bars_to_samples(2, span.bpm, SR)
        finally:
            clock_in.close()
            capture.close()
            transport(jack, "stop")


def sidecar_of(outputs) -> dict:
    return json.loads(Path(outputs[0]).with_suffix(".json").read_text())


def check_capture(daemon, dump, taken, song) -> tuple[int, dict]:
    """A capture the daemon took and finished: its context file, sidecar and replies agree, it is
    exactly its bars long; returns (lag against the song, its sidecar's capture fields)."""
    job_id, bar, bars, start, bpm, dropouts, error_ms = taken.args
    done = dump.wait_job_end(job_id, timeout=180)
    assert done.address == "/stage/job/done", (done, daemon.log_text()[-3000:])
    cap_done = dump.wait_for(lambda m: m.address == "/stage/capture/done" and m.args[0] == job_id, timeout=10)
    assert cap_done.args[1:4] == (bar, start, dropouts) and cap_done.args[4:] == done.args[1:]
    side = sidecar_of(done.args[1:])
    info = side["capture"]
    assert (info["bar"], info["bars"], info["start_sample"], info["dropouts"]) == (bar, bars, start, dropouts)
    assert side["job_id"] == job_id and side["source"] == "capture" and side["bpm"] == pytest.approx(bpm, abs=1e-3)
    assert 100 < side["bpm"] < 140     # what xruns leave of the clock's tempo; a clean capture: within 0.1 (below)
    import soundfile as sf

    from stage_bridge.audio.timing import bars_to_samples

    context, rate = sf.read(side["context_path"], dtype="float32", always_2d=True)
    assert Path(side["context_path"]).parent == daemon.home.resolve() / "bounces"
    assert rate == SR and len(context) == info["length"] == bars_to_samples(bars, side["bpm"], SR, 4, 4)
    return locate_in_song(context.T, song, (bar - 1) * BAR_FRAMES), info


def test_daemon_captures_on_a_midi_note_and_on_osc(jack, song, tmp_path):
    """The whole daemon: `serve --capture-device`, triggered by a MIDI note (C1 = drums) on its
    MIDI input and by /stage/capture; a stall of the daemon is reported as a dropout."""
    for tool in ("oscsend", "oscdump"):
        require_tool(tool)
    from daemon_util import Daemon, OscDump

    song, song_path = song
    transport(jack, "stop", "locate 0")
    with OscDump() as dump, player_process(jack, song_path, jackutil.jack_env(jack)) as player, \
            midi_clock(jack, BPM) as clock:
        daemon = Daemon(tmp_path / "home", dump.port, midi=True, env=jackutil.jack_env(jack),
                        extra_args=["--midi-api", "jack", "--capture-device", "system@JACK"]).start()
        try:
            midi_in = jackutil.wait_for_port(jack, "STAGE Bridge:", timeout=20)
            connect(jack, clock, midi_in)
            connect(jack, player.midi_out, midi_in)
            for i, port in enumerate(player.outs):
                connect(jack, port, jackutil.wait_for_port(jack, f"PortAudio:in_{i}"))
            transport(jack, "play")
            time.sleep(2 * 4 * 60 / BPM + 1.0)           # two whole bars and a beat

            # a MIDI note: C1 (36) = drums over the configured bars (4 by default: wait for them)
            time.sleep(2 * 4 * 60 / BPM)
            for _ in range(8):  # on a loaded machine the input may start late: then "not recording yet", a bar more
                mark = dump.mark()
                player.note(36)
                taken = dump.wait_for(lambda m: m.address in ("/stage/capture/taken", "/stage/job/error"),
                                      timeout=10, since=mark)
                if taken.address == "/stage/capture/taken" or "not recording yet" not in taken.args[2]:
                    break
                time.sleep(BAR_S)
            assert taken.address == "/stage/capture/taken", taken
            assert taken.args[2] == 4 and taken.args[1] >= 1
            check_capture(daemon, dump, taken, song)

            # OSC, until one capture saw no xrun around its first bar line: it starts on the clock's downbeat
            seen, deadline, n, known_lag = [], time.monotonic() + CLEAN_WINDOW_DEADLINE_S, 0, None
            while True:
                n += 1
                asked, mark = time.monotonic(), dump.mark()
                daemon.send("/stage/capture", "siss", "bass", 2, "job_id", f"osc-{n}")
                taken = dump.wait_for(lambda m: m.address in ("/stage/capture/taken", "/stage/job/error")
                                      and m.args[0] == f"osc-{n}", timeout=10, since=mark)
                if taken.address == "/stage/job/error":   # dropouts left too little to place the bars
                    assert taken.args[1] == "bad_bars", taken
                    seen.append(taken.args[2])
                    assert time.monotonic() < deadline, f"no capture without an xrun: {seen}"
                    time.sleep(1.0)
                    continue
                lag, info = check_capture(daemon, dump, taken, song)
                seen.append((lag, info["dropouts"], info["mapping_error_ms"]))
                if start_was_clean(jack, asked, 2):
                    late = abs(lag) > PERIOD + 3 * info["mapping_error_ms"] * SR / 1000
                    bpm = sidecar_of(dump.wait_job_end(f"osc-{n}").args[1:])["bpm"]
                    off_tempo = bpm != pytest.approx(BPM, abs=0.1)
                    if (late or off_tempo) and any(t < asked for t in jack.xruns):
                        # the known lag after earlier xruns (see the jam test): it moves the ticks the
                        # tempo is fitted to as well (a lag of ~21 ms inside the fit: ~0.25 bpm)
                        known_lag = (*seen[-1], bpm)
                    else:
                        assert not late, seen
                        assert not off_tempo, (bpm, seen)
                    break
                assert time.monotonic() < deadline, f"no capture without an xrun: {seen}"
                time.sleep(3 * BAR_S)          # the next bars begin after this job's generation (a CPU load)

            # a stalled daemon misses JACK cycles: the capture over them says so
            daemon.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.3)
            daemon.proc.send_signal(signal.SIGCONT)
            time.sleep(BAR_S + 0.5)                       # a bar line after the stall: the two bars hold it
            mark = dump.mark()
            daemon.send("/stage/capture", "siss", "drums", 2, "job_id", "stalled")
            taken = dump.wait_for(lambda m: m.address in ("/stage/capture/taken", "/stage/job/error")
                                  and m.args[:1] == ("stalled",), timeout=10, since=mark)
            assert taken.address == "/stage/capture/taken", taken
            assert taken.args[5] >= 1, (taken, jack.xruns[-5:])
            lag, info = check_capture(daemon, dump, taken, song)
            assert info["dropouts"] >= 1 and info["dropout_samples"]

            # refusals: more bars than were played
            mark = dump.mark()
            daemon.send("/stage/capture", "siss", "drums", 500, "job_id", "too-many")
            refused = dump.wait_for(lambda m: m.address == "/stage/job/error", timeout=10, since=mark)
            assert refused.args[:2] == ("too-many", "bad_bars"), refused
        finally:
            transport(jack, "stop")
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
    if known_lag is not None:
        pytest.skip(f"OSC capture {known_lag[0]} samples from the downbeat at {known_lag[3]} bpm after earlier xruns "
                    "on this machine: the known lag of MIDI clock through rtmidi's JACK input after xruns (a late "
                    "or off-tempo capture with no xrun fails)")


def test_jam_playback_starts_on_the_next_bar_line_and_loops(jack, song, tmp_path):
    """In process: Playback on PortAudio's JACK output, following MidiClockInput; the song player
    records what arrives by transport frame, so bar b is at frame b * BAR_FRAMES. After xruns,
    rtmidi's JACK input (which stamps a message when its client runs, not by the frame it belongs
    to) was seen to lag by multiples of about four periods and stay late, and the clock's line
    with it: a late take after xruns is that known defect (skipped, saying so); a late take with
    no xrun at all fails."""
    from stage_bridge.bridge.capture import find_device
    from stage_bridge.bridge.midiclock import ClockTracker, MidiClockInput
    from stage_bridge.bridge.playback import Playback

    song, song_path = song
    take = np.random.default_rng(5).standard_normal((2, BAR_FRAMES)).astype(np.float32) * 0.2   # one bar
    transport(jack, "stop", "locate 0")
    with player_process(jack, song_path, jackutil.jack_env(jack)) as player, midi_clock(jack, BPM), portaudio():
        tracker = ClockTracker()
        clock_in = MidiClockInput("jack_midi_clock", api="jack", tracker=tracker)
        playback = Playback(find_device("system@JACK", "output"), tracker)
        try:
            for i, port in enumerate(player.ins):
                connect(jack, jackutil.wait_for_port(jack, f"PortAudio:out_{i}"), port)
            transport(jack, "play")
            assert jackutil.wait_until(lambda: len(tracker.run_ticks()[1]) > 96 + 24, 20), "no clock run"
            asked = time.monotonic()
            playing_from = int(np.ceil(tracker.run_ticks()[1][-1] / 96)) * BAR_FRAMES
            playback.play(take, SR, loop_ticks=96)
            time.sleep(3 * BAR_S + 0.5)
            recording = player.recording(tmp_path / "heard.wav")
            # The take is scheduled to be *heard* on the bar line: PortAudio's output latency
            # after the callback. The recorder takes it from the port before, that much early.
            early = int(round(playback.latency * SR))
            # the first bar line it could start on, or the next (its first buffer may come later)
            starts = [playing_from - early, playing_from + BAR_FRAMES - early]
            found = [locate_in_song(take, recording, start) for start in starts]
            xruns = [t for t in jack.xruns if t <= asked + 3 * BAR_S]
        finally:
            playback.close()
            clock_in.close()
            transport(jack, "stop")
    on_time = [abs(lag) <= PERIOD for lag in found]
    if not any(on_time) and xruns:
        # the known defect (issue 17's note): after xruns the clock read through rtmidi's JACK input
        # lags by multiples of ~4 periods and stays late; without any xrun a late take is a failure
        pytest.skip(f"late by {found} frames after {len(xruns)} xrun(s) on this machine: the known lag of "
                    "MIDI clock through rtmidi's JACK input after xruns")
    assert any(on_time), (found, early)
    first = starts[on_time.index(True)]
    silent_from = max(first - BAR_FRAMES, playing_from - early - BAR_FRAMES)
    assert not recording[max(silent_from, 0):first - 2 * PERIOD].any(), "it played before its bar line"
    again = locate_in_song(take, recording, first + BAR_FRAMES)              # looping: bar after bar
    assert abs(again) <= PERIOD, (found, again)


def test_doctor_lists_the_jack_input(jack, tmp_path):
    """`stage-bridge doctor` names the inputs --capture-device accepts: host API, channels, rates."""
    import subprocess
    import sys

    env = {**jackutil.jack_env(jack), "STAGE_BRIDGE_CONFIG": str(tmp_path / "none.toml"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-m", "stage_bridge.cli", "doctor", "--home", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "audio inputs (for --capture-device" in res.stdout
    line = next(x for x in res.stdout.splitlines() if "JACK Audio Connection Kit" in x and "system" in x)
    assert "2 channel(s)" in line and "48000" in line, res.stdout
