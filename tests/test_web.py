"""The control room's HTTP API, every endpoint and every refusal, against the real server
(uvicorn on a free loopback port) and a real JobService whose runner is a fake that writes takes
with the daemon's own writer (no model). Requests go through http.client, so the tests set Host,
Origin and the other headers exactly as a browser, or an attacker, would."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import soundfile as sf

from stage_bridge.audio.waveform import png_bytes, waveform_png, waveform_rgba
from stage_bridge.bridge import protocol as P
from stage_bridge.bridge.config import load_config
from stage_bridge.bridge.jobs import FanOut, JobService, Journal
from stage_bridge.bridge.tempo import TempoSource
from stage_bridge.bridge.web import Guard, WebContext, WebEvents, WebServer, check_web_host
from stage_bridge.bridge.writer import publish_takes
from stage_bridge.cli import _serve_settings, build_parser
from stage_bridge.errors import Cancelled, StageError

TIMEOUT = 20.0
SR = 8000


# -- the set-up: a job service with a fake runner, and the web server in front of it --------------

class FakeRunner:
    """Writes `takes` sine takes with the real writer (sidecars included); a job whose id has a
    gate waits there (reporting progress) until released or cancelled."""

    def __init__(self, outbox: Path):
        self.outbox = outbox
        self.gates: dict[str, threading.Event] = {}
        self.hold_all = threading.Event()  # while set, every job waits

    def __call__(self, spec, progress, should_cancel) -> list[str]:
        progress(10.0)
        while self.hold_all.is_set():
            if should_cancel():
                raise Cancelled("cancelled")
            time.sleep(0.01)
        progress(100.0)
        seconds = spec.bars * spec.beats_per_bar * 60.0 / spec.bpm
        t = np.arange(int(seconds * SR)) / SR
        takes = [(0.5 * np.sin(2 * np.pi * 110 * (k + 1) * t)).astype(np.float32) for k in range(spec.takes)]
        sidecar = {"job_id": spec.id, **spec.params(), "seed": spec.seed, "model": "fake", "duration_s": seconds,
                   "timings": {"total_s": 0.5}, "fit": {"beat": 0.75}}
        return [str(p) for p in publish_takes(self.outbox, spec.name, spec.instrument, spec.bpm, takes, SR, sidecar)]


class Recorder:
    """Events seen by another front end (the OSC side, in the daemon)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.cond = threading.Condition()

    def _add(self, kind: str, job: Any) -> None:
        with self.cond:
            self.seen.append((kind, job.id))
            self.cond.notify_all()

    def accepted(self, job, position): self._add("accepted", job)
    def progress(self, job, percent): self._add("progress", job)
    def done(self, job): self._add("done", job)
    def failed(self, job): self._add("failed", job)
    def cancelled(self, job): self._add("cancelled", job)

    def wait(self, kind: str, job_id: str, timeout: float = TIMEOUT) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: (kind, job_id) in self.seen, timeout), (kind, job_id, self.seen)


class Room:
    def __init__(self, home: Path, token: str | None = None, max_upload: int = 10 << 20, capture: Any = None):
        self.home = home
        for d in ("inbox", "outbox", "bounces"):
            (home / d).mkdir(parents=True, exist_ok=True)
        self.outbox, self.bounces = home / "outbox", home / "bounces"
        self.runner = FakeRunner(self.outbox)
        self.osc = Recorder()
        self.events = WebEvents()
        self.tempo = TempoSource()
        # the page's events first: once the recorder has seen an event, the page has too
        self.service = JobService(Journal(home / "jobs.sqlite3"), self.runner, FanOut(self.events, self.osc),
                                  self.tempo, home, folders=(home / "inbox", self.outbox, self.bounces))
        self.service.start()
        self.ctx = WebContext(self.service, self.tempo, self.events, ("drums", "bass"),
                              [{"instrument": "drums", "model": "fake", "random_weights": True}], "cpu", "fp32",
                              home, self.outbox, self.bounces, self.service.roots, [home / "kept"],
                              {"MIDI clock": "Test port (alsa)"}, token, max_upload, capture)
        self.server = WebServer(self.ctx, "127.0.0.1", 0)
        self.server.start()
        self.host = f"127.0.0.1:{self.server.port}"
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                csrf: bool = True, token: bool = True) -> tuple[int, dict[str, str], bytes]:
        h = {"Host": self.host}
        if method != "GET" and csrf:
            h["X-Stage-Bridge"] = "1"
        if self.token and token:
            h["X-Stage-Token"] = self.token
        h.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        status, _, raw = self.request(method, path, data, **kw)
        return status, json.loads(raw) if raw else None

    def upload(self, data: bytes, **query: Any) -> tuple[int, Any]:
        from urllib.parse import urlencode
        query = {"filename": "verse.wav", "instrument": "drums", "bars": 1, "bpm": 120, **query}
        status, _, raw = self.request("POST", "/api/jobs?" + urlencode(query), data,
                                      {"Content-Type": "application/octet-stream"})
        return status, json.loads(raw)

    def stop(self) -> None:
        self.server.stop()
        self.service.stop()
        self.service.close()


@pytest.fixture
def room(tmp_path) -> Iterator[Room]:
    r = Room(tmp_path / "home")
    yield r
    r.stop()


def wav_bytes(seconds: float = 2.0, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * sr)) / sr
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def finished(room: Room, job_id: str) -> dict[str, Any]:
    room.osc.wait("done", job_id)
    status, jobs = room.json("GET", "/api/jobs")
    assert status == 200
    return next(j for j in jobs if j["id"] == job_id)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- the page and the guard ------------------------------------------------------------------------

def test_page_and_static_files_are_served_with_security_headers(room):
    status, headers, body = room.request("GET", "/")
    assert status == 200 and b"<title>STAGE control room</title>" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "style.css"):
        status, _, body = room.request("GET", f"/static/{name}")
        assert status == 200 and body


@pytest.mark.parametrize("host", ["evil.example:80", "127.0.0.1", "192.168.1.5:{port}", ""])
def test_a_foreign_host_header_is_refused(room, host):
    """DNS rebinding: a page elsewhere whose name now points at 127.0.0.1 sends its own Host."""
    status, _, body = room.request("GET", "/api/status", headers={"Host": host.format(port=room.server.port)})
    assert status == 403 and json.loads(body)["error"] == "wrong_host"


def test_loopback_names_are_accepted_as_host(room):
    for host in (f"localhost:{room.server.port}", f"[::1]:{room.server.port}"):
        assert room.request("GET", "/api/status", headers={"Host": host})[0] == 200


@pytest.mark.parametrize("method, path", [("GET", "/api/status"), ("POST", "/api/jobs/x/cancel")])
def test_a_foreign_origin_is_refused(room, method, path):
    status, _, body = room.request(method, path, headers={"Origin": "http://evil.example"})
    assert status == 403 and json.loads(body)["error"] == "wrong_origin"


def test_the_page_s_own_origin_is_accepted(room):
    status, _ = room.json("POST", "/api/jobs/nope/cancel", headers={"Origin": f"http://{room.host}"})
    assert status == 404  # past the guard: the job is unknown


def test_a_post_without_the_csrf_header_is_refused(room):
    """A cross-site form can POST without an Origin in old browsers, but never with a custom header."""
    status, body = room.json("POST", "/api/jobs/nope/cancel", csrf=False)
    assert status == 403 and body["error"] == "csrf"


def test_a_token_is_required_on_every_request_when_set(tmp_path):
    r = Room(tmp_path / "home", token="s3cret-token")
    try:
        for path in ("/", "/api/status", "/static/app.js", "/api/events"):
            assert r.request("GET", path, token=False)[0] == 401, path
        assert r.request("GET", "/api/status", headers={"X-Stage-Token": "wrong"}, token=False)[0] == 401
        assert r.request("GET", "/api/status?token=wrong", token=False)[0] == 401
        assert r.request("GET", "/api/status", token=True)[0] == 200
        assert r.request("GET", "/api/status?token=s3cret-token", token=False)[0] == 200
        assert r.server.url.endswith("/?token=s3cret-token")
    finally:
        r.stop()


def test_beyond_loopback_needs_the_explicit_flag_and_a_token():
    with pytest.raises(StageError, match="--allow-remote"):
        check_web_host("0.0.0.0", allow_remote=False)
    check_web_host("0.0.0.0", allow_remote=True)
    check_web_host("127.0.0.1", allow_remote=False)
    with pytest.raises(ValueError, match="token"):
        Guard(None, hosts=None, token=None)


# -- status and events ----------------------------------------------------------------------------

def test_status_tells_device_models_tempo_inputs_and_queue(room):
    status, s = room.json("GET", "/api/status")
    assert status == 200
    assert s["device"] == "cpu" and s["precision"] == "fp32" and s["tempo"] is None
    assert s["models"] == [{"instrument": "drums", "model": "fake", "random_weights": True}]
    assert s["inputs"] == {"MIDI clock": "Test port (alsa)"} and s["instruments"] == ["drums", "bass"]
    assert s["keep_folders"] == [str(room.home / "kept")]
    room.tempo.set(P.Tempo(97.5, 3, 4))
    room.runner.hold_all.set()
    _, first = room.upload(wav_bytes())
    _, second = room.upload(wav_bytes())
    room.osc.wait("progress", first["id"])
    _, s = room.json("GET", "/api/status")
    assert s["tempo"] == {"bpm": 97.5, "source": "osc", "beats_per_bar": 3, "beat_unit": 4}
    assert s["running"]["id"] == first["id"] and s["running"]["progress"] == 10.0
    assert [j["id"] for j in s["queued"]] == [second["id"]]
    room.runner.hold_all.clear()
    room.osc.wait("done", second["id"])


def read_events(room: Room, count: int, after_hello: Any = None) -> list[dict[str, Any]]:
    """The first `count` events of a new stream; `after_hello()` runs once the stream is open."""
    sock = socket.create_connection(("127.0.0.1", room.server.port), timeout=TIMEOUT)
    try:
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: {room.host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        f = sock.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200")
        events: list[dict[str, Any]] = []
        while len(events) < count:
            line = f.readline()
            assert line, "the stream ended"
            if b"data: " in line:  # chunked: each event's line arrives inside a chunk
                events.append(json.loads(line.split(b"data: ", 1)[1]))
                if events[-1]["type"] == "hello" and after_hello is not None:
                    after_hello()
        return events
    finally:
        sock.close()


def test_events_stream_hello_then_the_job_s_life(room):
    submitted: list[str] = []
    events = read_events(room, 5, after_hello=lambda: submitted.append(room.upload(wav_bytes())[1]["id"]))
    job = submitted[0]
    assert [e["type"] for e in events] == ["hello", "accepted", "progress", "progress", "done"]
    assert all(e["job"] == job for e in events[1:])
    assert [e["percent"] for e in events[2:4]] == [10.0, 100.0]
    assert events[4]["takes"] == [Path(p).name for p in room.service.find(job).outputs]


def test_event_streams_end_when_the_daemon_stops(tmp_path):
    r = Room(tmp_path / "home")
    opened, ended = threading.Event(), threading.Event()

    def listen() -> None:
        try:
            read_events(r, 2, after_hello=opened.set)
        except AssertionError:
            ended.set()  # the stream ended after its hello

    t = threading.Thread(target=listen)
    t.start()
    assert opened.wait(TIMEOUT)
    r.stop()
    t.join(TIMEOUT)
    assert ended.is_set()


def test_fan_out_delivers_to_every_front_end_even_when_one_fails(room):
    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("broken front end")

    seen = Recorder()
    fan = FanOut(Broken(), seen)
    job = type("J", (), {"id": "j1"})()
    fan.accepted(job, 0)
    fan.done(job)
    assert seen.seen == [("accepted", "j1"), ("done", "j1")]


# -- new jobs from uploads --------------------------------------------------------------------------

def test_upload_queues_a_job_on_the_same_service_and_its_takes_appear(room):
    status, job = room.upload(wav_bytes(), takes=2, prompt="Genres: Rock.", seed=7, beats_per_bar=3, beat_unit=4,
                              context_mode="mix")
    assert status == 201, job
    assert job["source"] == "web" and job["name"] == "verse" and job["seed"] == 7 and job["meter"] == "3/4"
    uploaded = [p for p in room.bounces.iterdir()]
    assert [p.name for p in uploaded] == [f"verse.{job['id']}.wav"]
    assert uploaded[0].read_bytes() == wav_bytes()
    done = finished(room, job["id"])
    assert done["state"] == "done" and done["context"] is True and done["prompt"] == "Genres: Rock."
    takes = done["results"]
    assert [t["take"] for t in takes] == [1, 2]
    assert takes[0]["fit"] == {"beat": 0.75} and takes[0]["model"] == "fake" and takes[0]["seed"] == 7
    status, headers, audio = room.request("GET", f"/api/takes/{takes[0]['id']}/audio")
    assert status == 200 and headers["content-type"] == "audio/wav"
    assert audio == (room.outbox / takes[0]["id"]).read_bytes()
    data, sr = sf.read(io.BytesIO(audio))
    assert sr == SR and len(data) == int(1 * 3 * 60 / 120 * SR)
    status, headers, context = room.request("GET", f"/api/jobs/{job['id']}/context")
    assert status == 200 and context == wav_bytes()


def test_take_audio_supports_ranges_and_download_names(room):
    _, job = room.upload(wav_bytes(), seed=5)
    take = finished(room, job["id"])["results"][0]
    status, headers, part = room.request("GET", f"/api/takes/{take['id']}/audio", headers={"Range": "bytes=0-99"})
    assert status == 206 and len(part) == 100
    status, headers, _ = room.request("GET", f"/api/takes/{take['id']}/audio?download=1")
    from urllib.parse import unquote
    disposition = headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert unquote(disposition.split("filename*=utf-8''")[1]) == "verse - drums take 1 (120 bpm, seed 5).wav"


def test_bars_default_to_the_whole_file_at_the_given_tempo(room):
    _, job = room.upload(wav_bytes(4.0), bars="", bpm=120)  # 4 s at 120 bpm 4/4 = 2 bars
    assert job["bars"] == 2


def test_upload_without_any_tempo_is_refused_and_leaves_nothing(room):
    status, body = room.upload(wav_bytes(), bars="", bpm="")
    assert status == 400 and body["error"] == "no_tempo"
    assert leftovers(room.bounces) == []


def test_bpm_prefill_comes_from_the_daemon_s_tempo(room):
    room.tempo.set(P.Tempo(90.0))
    status, job = room.upload(wav_bytes(), bpm="")
    assert status == 201 and job["bpm"] == 90.0 and job["tempo_source"] == "osc"


@pytest.mark.parametrize("query, code", [
    ({"bpm": 999}, "bad_tempo"), ({"takes": 99}, "bad_option"), ({"bpm": "fast"}, "bad_option"),
    ({"instrument": "kazoo"}, "bad_instrument"), ({"bars": 0}, "bad_bars"), ({"bars": "x"}, "bad_bars"),
    ({"context_mode": "loud"}, "bad_option"), ({"filename": "notes.txt"}, "not_audio"),
])
def test_bad_options_are_refused_and_leave_nothing(room, query, code):
    status, body = room.upload(wav_bytes(), **query)
    assert status == 400 and body["error"] == code, body
    assert leftovers(room.bounces) == []


def test_what_is_not_audio_is_refused_at_once_and_leaves_nothing(room):
    status, body = room.upload(b"RIFF not really a wave file" * 10)
    assert status == 400 and body["error"] == "not_audio"
    assert leftovers(room.bounces) == []


def test_an_empty_upload_is_refused(room):
    status, body = room.upload(b"")
    assert status == 400 and body["error"] == "empty_audio"
    assert leftovers(room.bounces) == []


def test_an_oversize_upload_is_refused_by_its_declared_length(tmp_path):
    r = Room(tmp_path / "home", max_upload=1000)
    try:
        status, body = r.upload(wav_bytes())
        assert status == 413 and body["error"] == "too_large"
        assert leftovers(r.bounces) == []
    finally:
        r.stop()


def test_an_oversize_upload_without_a_length_is_cut_off_while_it_streams(tmp_path):
    r = Room(tmp_path / "home", max_upload=1000)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", r.server.port, timeout=TIMEOUT)
        conn.request("POST", "/api/jobs?filename=a.wav&instrument=drums&bars=1&bpm=120",
                     body=iter([b"x" * 600, b"x" * 600, b"x" * 600]), encode_chunked=True,
                     headers={"Host": r.host, "X-Stage-Bridge": "1", "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["error"] == "too_large"
        conn.close()
        assert leftovers(r.bounces) == []
    finally:
        r.stop()


def test_a_full_queue_refuses_the_upload_and_removes_the_file(tmp_path):
    r = Room(tmp_path / "home")
    r.service.queue.capacity = 1
    r.runner.hold_all.set()
    try:
        _, first = r.upload(wav_bytes())
        r.osc.wait("progress", first["id"])
        assert r.upload(wav_bytes())[0] == 201
        status, body = r.upload(wav_bytes())
        assert status == 409 and body["error"] == "queue_full"
        assert len(leftovers(r.bounces)) == 2
    finally:
        r.runner.hold_all.clear()
        r.stop()


# -- cancel -----------------------------------------------------------------------------------------

def test_cancel_a_running_and_a_queued_job(room):
    room.runner.hold_all.set()
    _, running = room.upload(wav_bytes())
    _, queued = room.upload(wav_bytes())
    room.osc.wait("progress", running["id"])
    for job in (queued, running):
        status, body = room.json("POST", f"/api/jobs/{job['id']}/cancel")
        assert status == 200 and body == {"cancelling": job["id"]}
        room.osc.wait("cancelled", job["id"])
    _, jobs = room.json("GET", "/api/jobs")
    assert {j["id"]: j["state"] for j in jobs} == {running["id"]: "cancelled", queued["id"]: "cancelled"}
    assert leftovers(room.outbox) == []


def test_cancel_of_an_unknown_job_is_404(room):
    status, body = room.json("POST", "/api/jobs/no-such-job/cancel")
    assert status == 404 and body["error"] == "unknown_job"


# -- pictures ---------------------------------------------------------------------------------------

def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_waveform_pictures_of_takes_and_contexts(room):
    _, job = room.upload(wav_bytes())
    take = finished(room, job["id"])["results"][0]
    for path in (f"/api/takes/{take['id']}/waveform.png", f"/api/jobs/{job['id']}/context.png"):
        status, headers, png = room.request("GET", path)
        assert status == 200 and headers["content-type"] == "image/png"
        assert png_size(png) == (600, 64)


def test_waveform_draws_the_envelope_between_min_and_max():
    t = np.arange(8000) / 8000
    loud = np.sin(2 * np.pi * 50 * t).astype(np.float32)  # full scale: every column spans the height
    image = waveform_rgba(loud, 10, 9)
    assert (image[:, :, 3] == 255).all()
    quiet = np.zeros(8000, np.float32)  # silence: the centre line only
    image = waveform_rgba(quiet, 10, 9)
    assert (image[4, :, 3] == 255).all() and image[:, :, 3].sum() == 10 * 255
    half = np.concatenate([np.zeros(4000, np.float32), loud[:4000]])
    image = waveform_rgba(half, 10, 9)
    assert image[0, :5, 3].sum() == 0 and (image[0, 5:, 3] == 255).all()


def test_png_bytes_round_trip_through_zlib():
    import zlib
    image = waveform_rgba(np.linspace(-1, 1, 1000, dtype=np.float32), 7, 5)
    png = png_bytes(image)
    idat = png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(5, 1 + 7 * 4)
    assert (rows[:, 0] == 0).all() and (rows[:, 1:].reshape(5, 7, 4) == image).all()
    assert png_size(waveform_png(np.zeros((2, 10), np.float32), 3, 2)) == (3, 2)


# -- ids, never paths -------------------------------------------------------------------------------

def test_take_ids_reach_only_files_the_daemon_made(room, tmp_path):
    _, job = room.upload(wav_bytes())
    finished(room, job["id"])
    (room.home / "secret.wav").write_bytes(wav_bytes())
    (tmp_path / "outside.wav").write_bytes(wav_bytes())
    (room.outbox / "mine.wav").write_bytes(wav_bytes())  # the musician's own file: no sidecar of ours
    (room.outbox / "forged.wav").symlink_to(tmp_path / "outside.wav")  # a link with a sidecar that claims it
    (room.outbox / "forged.json").write_text(json.dumps({"file": "forged.wav", "take": 1, "job_id": job["id"]}))
    bad = ["..%2Fsecret.wav", "%2E%2E%2Fsecret.wav", "..%5Csecret.wav", "mine.wav", "forged.wav", ".hidden.wav",
           "jobs.sqlite3", "%2Fetc%2Fpasswd", "mine.json", "nothing.wav"]
    for take_id in bad:
        for path in (f"/api/takes/{take_id}/audio", f"/api/takes/{take_id}/waveform.png"):
            status, _, body = room.request("GET", path)
            assert status == 404, (path, body[:200])
        for action in ("keep", "delete"):
            status, _ = room.json("POST", f"/api/takes/{take_id}/{action}", {"folder": 0})
            assert status == 404, (take_id, action)
    assert (room.outbox / "mine.wav").exists() and (tmp_path / "outside.wav").exists()


def test_a_context_is_served_only_for_a_journal_job_inside_the_daemon_s_folders(room, tmp_path):
    status, body = room.json("GET", "/api/jobs/unknown/context")
    assert status == 404 and body["error"] == "unknown_job"
    _, job = room.upload(wav_bytes())
    finished(room, job["id"])
    context = next(room.bounces.iterdir())
    context.unlink()
    (tmp_path / "elsewhere.wav").write_bytes(wav_bytes())
    context.symlink_to(tmp_path / "elsewhere.wav")  # swapped for a link out of the home: not served
    status, body = room.json("GET", f"/api/jobs/{job['id']}/context")
    assert status == 404 and body["error"] == "no_context"


# -- keep and delete --------------------------------------------------------------------------------

def test_keep_copies_the_take_and_its_sidecar_under_a_readable_name(room):
    _, job = room.upload(wav_bytes(), seed=11)
    take = finished(room, job["id"])["results"][0]
    status, body = room.json("POST", f"/api/takes/{take['id']}/keep", {"folder": 0})
    assert status == 200
    kept = Path(body["kept"])
    assert kept == room.home / "kept" / "verse - drums take 1 (120 bpm, seed 11).wav"
    assert kept.read_bytes() == (room.outbox / take["id"]).read_bytes()
    assert json.loads(kept.with_suffix(".json").read_text())["job_id"] == job["id"]
    status, body = room.json("POST", f"/api/takes/{take['id']}/keep", {"folder": 0})
    assert Path(body["kept"]).name == "verse - drums take 1 (120 bpm, seed 11) (2).wav"
    for folder in (1, -1, "0", None, True):
        status, body = room.json("POST", f"/api/takes/{take['id']}/keep", {"folder": folder})
        assert status == 400 and body["error"] == "bad_request", folder
    status, _, _ = room.request("POST", f"/api/takes/{take['id']}/keep", b"not json")
    assert status == 400


def test_delete_moves_the_take_and_its_sidecar_to_the_freedesktop_trash(room, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    _, job = room.upload(wav_bytes())
    take = finished(room, job["id"])["results"][0]
    original = (room.outbox / take["id"]).read_bytes()
    status, body = room.json("POST", f"/api/takes/{take['id']}/delete")
    assert status == 200, body
    trash = tmp_path / "data" / "Trash"
    assert body["trashed"] == [str(trash / "files" / take["id"]),
                               str(trash / "files" / take["id"].replace(".wav", ".json"))]
    assert (trash / "files" / take["id"]).read_bytes() == original
    info = (trash / "info" / f"{take['id']}.trashinfo").read_text().splitlines()
    assert info[0] == "[Trash Info]"
    from urllib.parse import unquote
    assert unquote(info[1].removeprefix("Path=")) == str(room.outbox / take["id"])
    assert info[2].startswith("DeletionDate=") and len(info[2]) == len("DeletionDate=2026-01-01T00:00:00")
    assert not (room.outbox / take["id"]).exists()
    assert finished(room, job["id"])["results"] == []
    assert room.request("GET", f"/api/takes/{take['id']}/audio")[0] == 404


def test_trash_never_replaces_what_is_already_there(tmp_path):
    from stage_bridge.bridge.trash import freedesktop_trash
    trash = tmp_path / "Trash"
    moved = []
    for content in (b"one", b"two"):
        f = tmp_path / "take.wav"
        f.write_bytes(content)
        moved.append(freedesktop_trash(f, trash))
    assert [p.name for p in moved] == ["take.wav", "take.2.wav"]
    assert [p.read_bytes() for p in moved] == [b"one", b"two"]
    assert sorted(p.name for p in (trash / "info").iterdir()) == ["take.2.wav.trashinfo", "take.wav.trashinfo"]


# -- settings ---------------------------------------------------------------------------------------

def test_web_settings_from_the_command_line_environment_and_file(tmp_path):
    parse = lambda *a: load_config(_serve_settings(build_parser().parse_args(["serve", *a])), env={},
                                   config_file=tmp_path / "none.toml")
    cfg = parse()
    assert (cfg.web, cfg.web_host, cfg.web_port, cfg.web_token) == (True, "127.0.0.1", 9002, None)
    cfg = parse("--web-port", "0", "--web-host", "::1")
    assert (cfg.web_port, cfg.web_host) == (0, "::1")
    assert parse("--no-web").web is False
    cfg = load_config({}, env={"STAGE_BRIDGE_WEB_TOKEN": "abc", "STAGE_BRIDGE_WEB": "off"},
                      config_file=tmp_path / "none.toml")
    assert (cfg.web_token, cfg.web) == ("abc", False)
    (tmp_path / "c.toml").write_text("web_port = 9100\n")
    assert load_config({}, env={}, config_file=tmp_path / "c.toml").web_port == 9100
    with pytest.raises(StageError, match="web port"):
        load_config({"web_port": 70000}, env={}, config_file=tmp_path / "none.toml")


def test_a_taken_port_is_a_clear_error(room):
    with pytest.raises(StageError, match="--web-port"):
        WebServer(room.ctx, "127.0.0.1", room.server.port)


def test_keep_into_a_folder_that_cannot_be_made_is_a_clear_refusal(room):
    import dataclasses

    from stage_bridge.bridge.web import WebError, keep
    _, job = room.upload(wav_bytes())
    take_id = finished(room, job["id"])["results"][0]["id"]
    blocker = room.home / "a file, not a folder"
    blocker.write_text("")
    from stage_bridge.bridge.takes import find_take
    with pytest.raises(WebError, match="pick another folder") as refused:
        keep(dataclasses.replace(room.ctx, keep_folders=[blocker / "kept"]), find_take(room.outbox, take_id), 0)
    assert refused.value.code == "output_not_writable"


def test_delete_where_there_is_no_trash_refuses_and_keeps_the_take(room, monkeypatch):
    import sys
    _, job = room.upload(wav_bytes())
    take_id = finished(room, job["id"])["results"][0]["id"]
    monkeypatch.setattr(sys, "platform", "win32")  # the Recycle Bin is not supported yet
    status, body = room.json("POST", f"/api/takes/{take_id}/delete")
    assert status == 400 and body["error"] == "trash_unavailable" and "Explorer" in body["message"]
    assert (room.outbox / take_id).exists() and (room.outbox / take_id).with_suffix(".json").exists()


def test_capture_button_queues_through_the_capture_service(tmp_path):
    """Capture mode: POST /api/capture is `/stage/capture` from the page, validated by the same
    parser; without a capture input it is refused with what to do."""
    from stage_bridge.bridge import protocol as P

    plain = Room(tmp_path / "plain")
    try:
        assert plain.json("GET", "/api/status")[1]["capture"] is False
        status, body = plain.json("POST", "/api/capture", {"instrument": "drums", "bars": 4})
        assert status == 409 and "--capture-device" in body["message"]
    finally:
        plain.stop()
    asked: list[P.CaptureRequest] = []

    def capture(req: P.CaptureRequest):
        asked.append(req)
        job = room.upload(wav_bytes(), filename="cut.wav")[1]  # stands in for the cut bars' job
        return room.service.find(job["id"])

    room = Room(tmp_path / "capture", capture=capture)
    try:
        assert room.json("GET", "/api/status")[1]["capture"] is True
        status, body = room.json("POST", "/api/capture", {"instrument": "bass", "bars": 8, "takes": 2,
                                                          "context_mode": "mix", "prompt": "funk"})
        assert status == 201, body
        assert asked == [P.CaptureRequest("bass", 8, takes=2, context_mode="mix", prompt="funk")]
        for bad, code in [({"instrument": "drums", "bars": 0}, "bad_bars"), ({"instrument": "kazoo", "bars": 4},
                          "bad_instrument"), ({"instrument": "drums", "bars": 4, "bpm": 120}, "bad_option"),
                          ([1, 2], "bad_request")]:
            status, body = room.json("POST", "/api/capture", bad)
            assert status == 400 and body["error"] == code, (bad, body)
        assert len(asked) == 1
    finally:
        room.stop()
