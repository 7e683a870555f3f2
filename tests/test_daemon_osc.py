"""The daemon end to end over real OSC: `stage-bridge serve` as a subprocess, liblo's `oscsend`
as the device and `oscdump` as the device's reply port (independent of python-osc, which the
daemon uses). Tiny-random model on the CPU; daemons are shared per module to save start-ups.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from daemon_util import OscMsg, Rig, running_daemons, unique_id
from stage_bridge.bridge import protocol as P

pytestmark = pytest.mark.slow  # a whole daemon answering real OSC peers (oscsend/oscdump)

GEN, TEMPO, CANCEL, STATUS, PING = P.GENERATE, P.TEMPO, P.CANCEL, P.STATUS, P.PING
LONG = dict(bars=64, bpm=120.0)  # 128 s of audio: ~10 s for the tiny model on 2 CPU cores; always cancelled

# Codes no OSC message can provoke on a healthy machine (they need the GPU/engine to fail).
NOT_PROVOKABLE = {"out_of_memory", "engine_error"}
# Codes whose provocation depends on this machine's free memory (test_budget.py injects the figure).
NOT_PROVOKABLE |= {"too_large"}
# Codes the tests below provoke outside the REFUSALS tables (each test asserts its own code).
PROVOKED_ELSEWHERE = {
    "duplicate_job": "test_duplicate_job_running_or_queued",
    "not_audio": "test_job_error_for_bad_context_file", "empty_audio": "test_job_error_for_bad_context_file",
    "non_finite_audio": "test_job_error_for_bad_context_file",
    "no_tempo": "test_no_tempo", "queue_full": "test_queue_full", "output_not_writable": "test_output_not_writable",
    "weights_missing": "test_weights_missing_fails_only_that_instrument",
}
PROVOKED_IN = {  # code: (test module, test) for codes that need a set-up of their own (a full tmpfs)
    "disk_full": ("test_daemon_disk.py", "test_disk_full_mid_job_ends_it_with_disk_full_and_the_worker_lives_on"),
}


def _noise(path: Path, seconds: float, sr: int, channels: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (rng.standard_normal((int(seconds * sr), channels)) * 0.1).astype(np.float32), sr)
    return path


@pytest.fixture(scope="module")
def rigs(tmp_path_factory) -> tuple[Rig, Rig]:
    """Both daemons of this module, started in parallel (each start costs seconds of torch import):
    - main: tiny-random for drums and bass, default queue;
    - small: --queue-size 2, --no-web, drums=stage-drums with an empty weights folder (weights_missing),
      bass=tiny-random, loudness matching off (from the environment); it never receives /stage/tempo, so no_tempo stays provokable.
    """
    root = tmp_path_factory.mktemp("osc")
    weights = root / "empty-weights"
    weights.mkdir()
    main = dict(home=root / "home", extra_args=["--web-port", "0"])
    small = dict(home=root / "small-home", models=["drums=stage-drums", "bass=tiny-random"],
                 extra_args=["--queue-size", "2", "--no-web"],
                 env={"STAGE_BRIDGE_WEIGHTS": str(weights), "STAGE_BRIDGE_LOUDNESS_OFFSET": "off"})
    with running_daemons(main, small) as (main_rig, small_rig):
        home = main_rig.home
        _noise(home / "bounces" / "verse.wav", 3.0, 44100)
        _noise(home.parent / "outside.wav", 1.0, 44100)  # real audio, but outside home
        (home / "bounces" / "link.wav").symlink_to(home.parent / "outside.wav")
        yield main_rig, small_rig


@pytest.fixture
def rig(rigs) -> Rig:
    return rigs[0]


@pytest.fixture
def small(rigs) -> Rig:
    return rigs[1]


# -- helpers -------------------------------------------------------------------------------------

def generate(rig: Rig, job_id: str, context: str = "", instrument: str = "drums", bars: int = 1,
             bpm: float | None = 120.0, mode: str = "click", **options: Any) -> None:
    types, args = "sssi", [job_id, context, instrument, bars]
    if bpm is not None:
        types, args = types + "sf", args + ["bpm", float(bpm)]
    types, args = types + "ss", args + ["context_mode", mode]
    for key, value in options.items():
        types += "s" + ("i" if isinstance(value, int) else "f" if isinstance(value, float) else "s")
        args += [key, value]
    rig.send(GEN, types, *args)


def sync(rig: Rig, timeout: float = 10.0) -> None:
    """Round trip a ping: everything the daemon sent about earlier messages has arrived."""
    token = unique_id("sync")
    rig.send(PING, "s", token)
    rig.dump.wait_for(lambda m: m.address == P.PONG and m.args == (token,), timeout)


def wait_running(rig: Rig, job_id: str, percent: float = 0.0, timeout: float = 60.0) -> None:
    """Until the job reports `percent` (0.0 comes as it starts, before the context is encoded)."""
    rig.dump.wait_for(lambda m: m.address == P.PROGRESS and m.args[0] == job_id and m.args[1] >= percent, timeout)


def status(rig: Rig) -> OscMsg:
    mark = rig.dump.mark()
    rig.send(STATUS)
    return rig.dump.wait_for(lambda m: m.address == P.STATUS, 10, since=mark)


def expect_refused(rig: Rig, job_id: str, code: str, since: int) -> OscMsg:
    """An immediate /stage/job/error (never accepted)."""
    err = rig.dump.wait_for(lambda m: m.address == P.ERROR and m.args[0] == job_id, 10, since=since)
    assert err.types == "sss" and err.args[1] == code, err
    assert err.args[2], "the error needs a message for the musician"
    sync(rig)
    assert not [m for m in rig.dump.snapshot(since) if m.address == P.ACCEPTED and m.args[0] == job_id]
    return err


def outputs_named(rig: Rig, stem: str) -> list[Path]:
    return sorted(rig.outbox.glob(f"{stem}.*"))


def no_part_files(rig: Rig) -> None:
    assert not list(rig.outbox.glob(".*")), list(rig.outbox.glob(".*"))


def wav_frames(path: str | Path) -> tuple[int, int]:
    info = sf.info(str(path))
    return info.frames, info.samplerate


# -- ping, generate, tempo --------------------------------------------------------------------

def test_ping_pong_echoes_token(rig):
    token = unique_id("tok")
    rig.send(PING, "s", token)
    pong = rig.dump.wait_for(lambda m: m.address == P.PONG and m.args == (token,), 10)
    assert pong.types == "s"
    mark = rig.dump.mark()
    rig.send(PING)
    bare = rig.dump.wait_for(lambda m: m.address == P.PONG, 10, since=mark)
    assert bare.args == ()


def test_info_tells_home_bounces_and_the_control_room(rig):
    mark = rig.dump.mark()
    rig.send(P.INFO)
    info = rig.dump.wait_for(lambda m: m.address == P.INFO and m.types, 10, since=mark)
    assert info.types == "sss"
    assert info.args[:2] == (str(rig.home.resolve()), str(rig.home.resolve() / "bounces"))
    ready = rig.daemon.wait_log(lambda line: line.startswith("stage-bridge ready:"), 5)
    assert info.args[2] == ready.rsplit(", web ", 1)[1].strip()  # the page's address, as the ready line says
    assert info.args[2].startswith("http://127.0.0.1:")


def test_info_says_no_control_room_when_it_is_off(small):
    mark = small.dump.mark()
    small.send(P.INFO)
    info = small.dump.wait_for(lambda m: m.address == P.INFO and m.types, 10, since=mark)
    assert info.args[2] == P.NO_WEB


def test_generate_exact_length_wav_sidecar_and_events(rig):
    job = unique_id("gen")
    context = str(rig.home / "bounces" / "verse.wav")
    generate(rig, job, context, "drums", bars=4, bpm=120.0, mode="mix", seed=7)
    end = rig.dump.wait_job_end(job, 120)
    events = rig.dump.job(job)
    assert end.address == P.DONE, (end, rig.daemon.log_text())
    assert events[0].address == P.ACCEPTED and events[0].types == "si" and events[0].args == (job, 0)
    assert events[-1] == end
    progress = [m.args[1] for m in events if m.address == P.PROGRESS]
    assert progress and all(m.types == "sf" for m in events if m.address == P.PROGRESS)
    assert progress == sorted(progress) and 0.0 <= progress[0] and progress[-1] <= 100.0
    assert [m.address for m in events].index(P.DONE) == len(events) - 1

    assert end.types == "ss"
    wav = Path(end.args[1])
    assert wav.is_absolute() and wav.is_file() and wav.parent == rig.outbox.resolve()
    assert wav.name == "verse.drums.120bpm.take1.wav" or wav.name.startswith("verse.drums.120bpm.take1-")
    frames, rate = wav_frames(wav)
    assert rate == 44100  # the context file's rate
    assert frames == 4 * 4 * 60 * 44100 // 120  # exactly 4 bars of 4/4 at 120 bpm, to the sample
    meta = json.loads(wav.with_suffix(".json").read_text())
    assert meta["job_id"] == job and meta["bars"] == 4 and meta["bpm"] == 120.0 and meta["seed"] == 7
    assert meta["tempo_source"] == "request" and meta["num_samples"] == frames and meta["sample_rate"] == 44100
    assert meta["context_path"] == str(Path(context).resolve()) and meta["file"] == wav.name
    no_part_files(rig)


def test_takes_arrive_under_the_context_as_configured(rig, small):
    """The daemon applies its loudness setting: 6 LU under the context by default (or as loud as
    the peak ceiling allows), and untouched when the setting is off."""
    context = str(rig.home / "bounces" / "verse.wav")
    job = unique_id("loud")
    generate(rig, job, context, "bass", bars=1, bpm=120.0, mode="mix", seed=3)
    end = rig.dump.wait_job_end(job, 60)
    assert end.address == P.DONE, (end, rig.daemon.log_text())
    meta = json.loads(Path(end.args[1]).with_suffix(".json").read_text())
    samples, _ = sf.read(end.args[1], dtype="float64")
    peak_db = 20 * np.log10(np.max(np.abs(samples)))
    assert meta["context_lufs"] is not None and meta["gain_db"] != 0.0
    on_target = abs(meta["lufs"] - (meta["context_lufs"] - 6.0)) < 0.2
    assert on_target or (meta["lufs"] < meta["context_lufs"] - 6.0 and peak_db > -1.1), (meta, peak_db)
    assert peak_db <= -1.0 + 1e-3

    small_context = small.home / "bounces" / "verse.wav"
    _noise(small_context, 3.0, 44100)
    job = unique_id("loud-off")
    generate(small, job, str(small_context), "bass", bars=1, bpm=120.0, mode="mix", seed=3)
    end = small.dump.wait_job_end(job, 60)
    assert end.address == P.DONE, (end, small.daemon.log_text())
    assert json.loads(Path(end.args[1]).with_suffix(".json").read_text())["gain_db"] == 0.0


def test_context_path_with_spaces_and_non_ascii(rig):
    """Paths as DAWs make them ("Samples/Recorded/My Song – Café (v2).wav") survive the UTF-8 round trip."""
    folder = rig.home / "bounces" / "Ableton Project" / "Samples"
    context = _noise(folder / "My Song – Café (v2).wav", 2.0, 48000, channels=1)
    job = unique_id("utf8")
    generate(rig, job, str(context), "bass", bars=1, bpm=120.0, mode="mix")
    end = rig.dump.wait_job_end(job, 60)
    assert end.address == P.DONE, (end, rig.daemon.log_text())
    wav = Path(end.args[1])
    assert wav.is_file() and wav.name.startswith("My Song") and "Café" in wav.name, wav
    meta = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["context_path"] == str(context.resolve())


def test_click_mode_without_context_uses_osc_tempo(rig):
    mark = rig.dump.mark()
    rig.send(TEMPO, "fii", 90.0, 3, 4)
    st = status(rig)
    assert st.types == "sifsss"
    state, queue_length, bpm, source, device, models = st.args
    assert (state, queue_length, bpm, source, device) == ("idle", 0, 90.0, "osc", "cpu")
    assert models == "drums=tiny-random,bass=tiny-random"
    assert not [m for m in rig.dump.snapshot(mark) if m.address == P.ERROR]

    job = unique_id("click")
    generate(rig, job, "", "bass", bars=2, bpm=None, mode="click")
    end = rig.dump.wait_job_end(job, 120)
    assert end.address == P.DONE, (end, rig.daemon.log_text())
    wav = Path(end.args[1])
    assert wav.name == f"{job}.bass.90bpm.take1.wav"
    frames, rate = wav_frames(wav)
    assert rate == 48000  # no context file: the daemon's click sample rate
    assert frames == 2 * 3 * 60 * 48000 // 90  # 2 bars of 3/4 at 90 bpm
    meta = json.loads(wav.with_suffix(".json").read_text())
    assert meta["tempo_source"] == "osc" and meta["beats_per_bar"] == 3 and meta["context_path"] == ""


# -- cancel and status -------------------------------------------------------------------------

def test_cancel_running_job_leaves_no_file(rig):
    job = unique_id("cxl")
    generate(rig, job, **LONG)
    wait_running(rig, job, percent=4.0)  # mid-generation
    rig.send(CANCEL, "s", job)
    end = rig.dump.wait_job_end(job, 30)
    assert end.address == P.CANCELLED and end.types == "s" and end.args == (job,)
    # /stage/job/cancelled is sent after the runner has returned: no write can follow it
    assert outputs_named(rig, job) == []
    no_part_files(rig)
    assert not [m for m in rig.dump.job(job) if m.address in (P.DONE, P.ERROR)]
    assert status(rig).args[:2] == ("idle", 0)


def busy_with_one_queued(rig: Rig, tag: str, **queued_params) -> tuple[str, str, object]:
    """A long job running and a 1-bar job queued behind it: (running id, queued id, its accepted reply)."""
    running, queued = unique_id(tag), unique_id(tag + "-queued")
    generate(rig, running, **LONG)
    wait_running(rig, running)
    generate(rig, queued, bars=1, **queued_params)
    accepted = rig.dump.wait_for(lambda m: m.address == P.ACCEPTED and m.args[0] == queued, 10)
    return running, queued, accepted


def test_cancel_queued_job(rig):
    running, queued, accepted = busy_with_one_queued(rig, "run")
    assert accepted.args == (queued, 1)
    rig.send(CANCEL, "s", queued)
    assert rig.dump.wait_job_end(queued, 10).address == P.CANCELLED
    rig.send(CANCEL, "s", running)
    assert rig.dump.wait_job_end(running, 30).address == P.CANCELLED
    sync(rig)
    assert [m.address for m in rig.dump.job(queued)] == [P.ACCEPTED, P.CANCELLED]  # it never ran
    assert outputs_named(rig, queued) == [] and outputs_named(rig, running) == []
    no_part_files(rig)


def test_status_while_busy(rig):
    running, queued, _ = busy_with_one_queued(rig, "busy", bpm=100.0)
    st = status(rig)
    assert st.args[:5] == ("busy", 1, LONG["bpm"], "request", "cpu")  # the running job's tempo and its source
    for job in (queued, running):
        rig.send(CANCEL, "s", job)
        assert rig.dump.wait_job_end(job, 30).address == P.CANCELLED
    assert status(rig).args[:2] == ("idle", 0)


def test_duplicate_job_running_or_queued(rig):
    running, queued, _ = busy_with_one_queued(rig, "dup")
    for job in (running, queued):
        mark = rig.dump.mark()
        generate(rig, job, bars=1)
        err = rig.dump.wait_for(lambda m: m.address == P.ERROR and m.args[0] == job, 10, since=mark)
        assert err.args[1] == "duplicate_job"
    mark = rig.dump.mark()
    for job in (queued, running):
        rig.send(CANCEL, "s", job)
        assert rig.dump.wait_job_end(job, 30, since=mark).address == P.CANCELLED
    sync(rig)
    assert [m.address for m in rig.dump.job(queued)] == [P.ACCEPTED, P.ERROR, P.CANCELLED]


# -- refusals: errors before a job is accepted -------------------------------------------------

# (code, type tags, args); "{id}" is the test's unique job id, "{home}" the daemon's home folder
REFUSALS = [
    ("bad_request", "sss", ["{id}", "", "drums"]),
    ("bad_request", "sisi", ["{id}", 5, "drums", 1]),
    ("bad_request", "sssisf", ["{id}", "", "drums", 1, "bpm", 120.0]),  # mix+click needs a file
    ("bad_job_id", "sssisfss", ["{id} has spaces!", "", "drums", 1, "bpm", 120.0, "context_mode", "click"]),
    ("bad_job_id", "sssisfss", ["x" * 65, "", "drums", 1, "bpm", 120.0, "context_mode", "click"]),
    ("bad_instrument", "sssisfss", ["{id}", "", "guitar", 1, "bpm", 120.0, "context_mode", "click"]),
    ("bad_bars", "sssisfss", ["{id}", "", "drums", 0, "bpm", 120.0, "context_mode", "click"]),
    ("bad_bars", "sssisfss", ["{id}", "", "drums", 513, "bpm", 120.0, "context_mode", "click"]),
    ("bad_bars", "sssfsfss", ["{id}", "", "drums", 2.5, "bpm", 120.0, "context_mode", "click"]),
    ("bad_tempo", "sssisfss", ["{id}", "", "drums", 1, "bpm", 10.0, "context_mode", "click"]),
    ("bad_tempo", "sssisfss", ["{id}", "", "drums", 1, "bpm", 301.0, "context_mode", "click"]),
    ("bad_tempo", "sssisfsiss", ["{id}", "", "drums", 1, "bpm", 120.0, "beats_per_bar", 0, "context_mode", "click"]),
    ("bad_tempo", "sssisfsiss", ["{id}", "", "drums", 1, "bpm", 120.0, "beat_unit", 3, "context_mode", "click"]),
    ("bad_option", "sssisfsi", ["{id}", "", "drums", 1, "bpm", 120.0, "colour", 3]),
    ("bad_option", "sssisfs", ["{id}", "", "drums", 1, "bpm", 120.0, "seed"]),
    ("bad_option", "sssisssf", ["{id}", "", "drums", 1, "bpm", "fast", "offset", 0.0]),
    ("bad_option", "sssisfsiss", ["{id}", "", "drums", 1, "bpm", 120.0, "takes", 9, "context_mode", "click"]),
    ("bad_option", "sssisfss", ["{id}", "", "drums", 1, "bpm", 120.0, "context_mode", "loud"]),
    ("bad_option", "sssisfsiss", ["{id}", "", "drums", 1, "bpm", 120.0, "seed", -1, "context_mode", "click"]),
    ("forbidden_path", "sssisf", ["{id}", "/etc/hostname", "drums", 1, "bpm", 120.0]),
    ("forbidden_path", "sssisf", ["{id}", "{home}/../outside.wav", "drums", 1, "bpm", 120.0]),
    ("forbidden_path", "sssisf", ["{id}", "../outside.wav", "drums", 1, "bpm", 120.0]),  # relative to home
    ("forbidden_path", "sssisf", ["{id}", "inbox/../../outside.wav", "drums", 1, "bpm", 120.0]),
    ("forbidden_path", "sssisf", ["{id}", "{home}/bounces/link.wav", "drums", 1, "bpm", 120.0]),  # symlink out
    ("file_missing", "sssisf", ["{id}", "{home}/bounces/missing.wav", "drums", 1, "bpm", 120.0]),
    ("file_missing", "sssisf", ["{id}", "bounces/missing.wav", "drums", 1, "bpm", 120.0]),
    ("file_missing", "sssisf", ["{id}", "{home}/bounces", "drums", 1, "bpm", 120.0]),  # a folder
]


@pytest.mark.parametrize("code,types,template", REFUSALS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(REFUSALS)])
def test_refused_generate(rig, code, types, template):
    job = unique_id("ref")
    args = [a.format(id=job, home=rig.home) if isinstance(a, str) else a for a in template]
    mark = rig.dump.mark()
    rig.send(GEN, types, *args)
    expect_refused(rig, args[0], code, mark)


# (address, type tags, args, the job id the error names, code)
OTHER_REFUSALS = [
    (TEMPO, "f", [500.0], "", "bad_tempo"),
    (TEMPO, "fii", [120.0, 0, 4], "", "bad_tempo"),
    (TEMPO, "fi", [120.0, 4], "", "bad_request"),
    (TEMPO, "s", ["fast"], None, "bad_tempo"),  # (the error names "fast" as its job id)
    (CANCEL, "", [], "", "bad_request"),
    (CANCEL, "ss", ["a", "b"], "a", "bad_request"),
    (CANCEL, "s", ["no such id"], "no such id", "bad_job_id"),
    (CANCEL, "s", ["{id}"], "{id}", "unknown_job"),
]


@pytest.mark.parametrize("address,types,template,named,code", OTHER_REFUSALS,
                         ids=[f"{a.rsplit('/', 1)[1]}-{c}-{i}" for i, (a, _, _, _, c) in enumerate(OTHER_REFUSALS)])
def test_refused_tempo_and_cancel(rig, address, types, template, named, code):
    job = unique_id("unk")
    args = [a.format(id=job) if isinstance(a, str) else a for a in template]
    before = status(rig).args[2:4]
    mark = rig.dump.mark()
    rig.send(address, types, *args)
    err = rig.dump.wait_for(lambda m: m.address == P.ERROR, 10, since=mark)
    assert err.args[1] == code, err
    if named is not None:
        assert err.args[0] == named.format(id=job), err
    assert status(rig).args[2:4] == before  # a refused /stage/tempo changes nothing


# -- errors of accepted jobs (the context file is read by the worker) --------------------------

def _text_as_wav(path: Path) -> None:
    path.write_text("this is not audio\n" * 100)


def _empty_wav(path: Path) -> None:
    sf.write(path, np.zeros((0, 2), np.float32), 44100)


def _silent_wav(path: Path) -> None:
    sf.write(path, np.zeros((44100, 2), np.float32), 44100)


def _nan_wav(path: Path) -> None:
    data = np.full((44100, 1), 0.1, np.float32)
    data[100] = np.nan
    sf.write(path, data, 44100, subtype="FLOAT")


@pytest.mark.parametrize("code,make,mode", [
    ("not_audio", _text_as_wav, "mix"),
    ("empty_audio", _empty_wav, "mix+click"),
    ("empty_audio", _silent_wav, "mix"),  # nothing to accompany
    ("non_finite_audio", _nan_wav, "mix"),
], ids=["not_audio", "empty_audio-no_samples", "empty_audio-silent", "non_finite_audio"])
def test_job_error_for_bad_context_file(rig, code, make, mode):
    job = unique_id("bad")
    path = rig.home / "bounces" / f"{job}.wav"
    make(path)
    generate(rig, job, str(path), "bass", bars=1, bpm=120.0, mode=mode)
    end = rig.dump.wait_job_end(job, 60)
    assert end.address == P.ERROR and end.args[1] == code, end
    assert rig.dump.job(job)[0].address == P.ACCEPTED
    assert outputs_named(rig, job) == []
    no_part_files(rig)


# -- the small daemon: no tempo, a full queue, an unwritable outbox, missing drums weights ------------------------------

def test_no_tempo(small):
    st = status(small)
    assert st.args[:4] == ("idle", 0, 0.0, "none")
    job = unique_id("notempo")
    mark = small.dump.mark()
    generate(small, job, instrument="bass", bpm=None, mode="click")
    expect_refused(small, job, "no_tempo", mark)


def test_queue_full(small):
    first, second, third, fourth = (unique_id(f"q{i}") for i in range(4))
    generate(small, first, instrument="bass", **LONG)
    wait_running(small, first)
    for job in (second, third, fourth):
        generate(small, job, instrument="bass", bars=1)
    err = small.dump.wait_for(lambda m: m.address == P.ERROR and m.args[0] == fourth, 10)
    assert err.args[1] == "queue_full"
    assert [m.args for m in small.dump.snapshot() if m.address == P.ACCEPTED and m.args[0] in (second, third)] \
        == [(second, 1), (third, 2)]
    for job in (third, second, first):
        small.send(CANCEL, "s", job)
        assert small.dump.wait_job_end(job, 30).address == P.CANCELLED
    again = unique_id("again")  # room again once the queue drained
    generate(small, again, instrument="bass", bars=1)
    assert small.dump.wait_job_end(again, 60).address == P.DONE


def test_output_not_writable(small):
    """An outbox that cannot be a folder (a file in its place: the daemon remakes a deleted outbox,
    but never removes a file it did not make) fails the job with output_not_writable."""
    job = unique_id("nowrite")
    away = small.outbox.with_name("outbox-away")
    small.outbox.rename(away)
    small.outbox.write_bytes(b"not a folder")
    try:
        generate(small, job, instrument="bass", bars=1)
        end = small.dump.wait_job_end(job, 60)
    finally:
        small.outbox.unlink()
        away.rename(small.outbox)
    assert end.address == P.ERROR and end.args[1] == "output_not_writable", end
    assert not small.home.joinpath("outbox-away").exists()


def test_weights_missing_fails_only_that_instrument(small):
    assert status(small).args[5] == "drums=missing,bass=tiny-random"
    drums, bass = unique_id("drums"), unique_id("bass")
    generate(small, drums, "", "drums", bars=1)
    generate(small, bass, "", "bass", bars=1)
    d_end, b_end = small.dump.wait_job_end(drums, 60), small.dump.wait_job_end(bass, 60)
    assert d_end.address == P.ERROR and d_end.args[1] == "weights_missing", d_end
    assert small.dump.job(drums)[0].address == P.ACCEPTED  # accepted: the device learns why from the error
    weights = small.daemon.extra_env["STAGE_BRIDGE_WEIGHTS"]
    assert "stage-drums.safetensors" in d_end.args[2] and weights in d_end.args[2]
    assert b_end.address == P.DONE and Path(b_end.args[1]).is_file()
    assert outputs_named(small, drums) == []


def test_every_provokable_error_code_is_covered():
    """Every code but those needing a failing engine is provoked by a test of this file: the
    refusal tables, or the test PROVOKED_ELSEWHERE names (a static check, whatever runs first)."""
    tables = {code for code, _, _ in REFUSALS} | {code for *_, code in OTHER_REFUSALS}
    names = {name for name in globals() if name.startswith("test_")}
    assert set(PROVOKED_ELSEWHERE.values()) <= names
    for module, test in PROVOKED_IN.values():
        assert f"def {test}(" in (Path(__file__).parent / module).read_text(encoding="utf-8"), (module, test)
    missing = set(P.ERROR_CODES) - NOT_PROVOKABLE - tables - set(PROVOKED_ELSEWHERE) - set(PROVOKED_IN)
    assert not missing, f"error codes no test provokes over OSC: {sorted(missing)}"
    assert NOT_PROVOKABLE <= set(P.ERROR_CODES)
