"""The watched folder: drop `NAME.drums.wav` (or `NAME.bass.flac`, ...) into `inbox/`, get stems in `outbox/`.

Naming: `NAME.INSTRUMENT.EXT`, INSTRUMENT one the daemon has a model for (drums, bass), EXT one of
.wav .flac .aif .aiff .ogg (any case). NAME may contain dots; it names the outputs
(`outbox/NAME.drums.120bpm.take1.wav`). An optional sidecar `NAME.json` (shared by
`NAME.drums.wav` and `NAME.bass.wav`) holds any of
    {"bpm": 120, "bars": 8, "prompt": "...", "takes": 2, "beats_per_bar": 4, "beat_unit": 4,
     "offset": 0.0, "context_mode": "mix+click", "seed": 7}
validated exactly like the options of `/stage/generate`. Unknown keys are logged and ignored.

Tempo: the sidecar's bpm, else the daemon's tempo (/stage/tempo, then MIDI clock).
Bars: the sidecar's bars, else the file's length after `offset`, rounded DOWN to whole bars at that
tempo and meter (at least 1, at most MAX_BARS). A file up to 10 ms short of a whole bar counts as
that bar, because DAWs round bar lengths to whole samples.

When a file is complete: the folder is polled every `interval` seconds with one `os.scandir`. A
file starts a job when its size and mtime (and those of its sidecar) are unchanged between two
consecutive polls, the newest of those mtimes is at least `settle` seconds old, and the size is
not 0. (There is no portable "is another program still writing it" test; this is the usual
stable-size rule. If an mtime lies in the future the file must instead be seen unchanged for
`settle` seconds.) A tool that can say when it has finished writes an empty `NAME.ready` marker
last: files of NAME whose marker is at least as new as they (and their sidecar) start at the next
poll, without waiting for the window. A tool that pauses longer than `settle` mid-write should
write under a temporary name (`*.part`, `*.tmp` or a hidden name) and rename the file when done,
or the half-written file may start a job of its own.

Once only: a job's id is `inbox-NAME-HASH`, HASH from the file name, size and mtime_ns, and the
journal keeps every job; at start the watcher reads the ids of the journal's inbox jobs, so a
file is never processed twice, even across restarts, whatever became of its job (done, failed,
cancelled). A re-exported file (new size or mtime) gets a new id and is processed again; editing
only the sidecar does not re-run a file that already ran.

Refusals (bad sidecar, unreadable audio, forbidden path, no tempo, full queue, ...) are logged
once, naming the file, and the file is left alone until it or its sidecar changes. Three refusals
clear by themselves: `no_tempo` is retried once the daemon knows a tempo, `queue_full` once the
queue has room, `disk_full` every DISK_FULL_RETRY_S seconds. Refusals are remembered in memory
only: after a restart they get one more try.

Reading: every file is opened with `open_regular` (never blocks on a FIFO, refuses what is not
a regular file, and a symlink whose target lies outside the daemon's folders is refused before it
is opened). File names are logged with control characters escaped (`show_name`), so a newline
in a name cannot forge a log line.

The watcher never deletes, moves or writes anything in `inbox/` (if the folder itself is deleted,
the job service makes it again). Hidden files, `*.part` and `*.tmp` files, `*.json` sidecars and
`*.ready` markers are not jobs; every other non-matching entry is ignored with
one log line (repeated only if it disappears and comes back).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

from ..atomic import NotRegularFile, OutsideRoots, open_regular
from ..audio.timing import whole_bars
from ..limits import MAX_BARS
from . import protocol as P
from .job import DEFAULT_METER
from .jobs import Job, JobService

log = logging.getLogger("stage_bridge.watcher")

_EXTENSIONS_BY_FORMAT = {"WAV": (".wav",), "FLAC": (".flac",), "AIFF": (".aif", ".aiff"), "OGG": (".ogg",)}


def _audio_extensions() -> tuple[str, ...]:
    from ..audio.io import SUPPORTED_FORMATS

    return tuple(ext for fmt in SUPPORTED_FORMATS for ext in _EXTENSIONS_BY_FORMAT.get(fmt, ()))


AUDIO_EXTENSIONS = _audio_extensions()
TEMP_SUFFIXES = (".part", ".tmp")
READY_SUFFIX = ".ready"
DISK_FULL_RETRY_S = 5.0
SIDECAR_KEYS = ("bars", *P.OPTION_TYPES)
BAR_TOLERANCE_S = Fraction(1, 100)
HISTORY_LIMIT = 100_000
SOURCE = "inbox"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_Sig = tuple  # (size, mtime_ns, sidecar (size, mtime_ns) or None)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def show_name(name: str) -> str:
    """`name` fit for one log line: control characters (newline, ...) escaped as in Python."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], name)


class _Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Refusal:
    sig: _Sig
    code: str
    at: float  # `now` of the poll that refused it


@dataclass
class _Seen:
    sig: _Sig
    since: float  # `now` of the poll that first saw this signature


def inbox_job_id(file_name: str, name: str, size: int, mtime_ns: int) -> str:
    """`inbox-NAME-HASH` (HASH of file name, size and mtime_ns); always a valid protocol job id."""
    digest = hashlib.sha1(f"{file_name}\0{size}\0{mtime_ns}".encode()).hexdigest()[:10]
    safe = _UNSAFE.sub("_", name).strip("._-")[:64 - len("inbox--") - len(digest)] or "file"
    return P.check_job_id(f"inbox-{safe}-{digest}")


def default_bars(frames: int, sample_rate: int, bpm: float, beats_per_bar: int, beat_unit: int,
                 offset: float = 0.0) -> int:
    """Whole bars in the audio after `offset` (rounded down, 10 ms tolerance), clamped to 1..MAX_BARS."""
    return max(1, min(MAX_BARS, whole_bars(frames, sample_rate, bpm, beats_per_bar, beat_unit, offset,
                                           BAR_TOLERANCE_S)))


class InboxWatcher:
    """Polls `inbox` and submits one job per new, completely written stem file to `service`."""

    def __init__(self, service: JobService, inbox: Path, instruments: Sequence[str], interval: float = 0.5,
                 settle: float = 1.0):
        self.service = service
        self.inbox = Path(inbox)
        self.interval = interval
        self.settle = settle
        self._instruments = tuple(i.lower() for i in instruments)
        self._seen: dict[str, _Seen] = {}
        self._refused: dict[str, _Refusal] = {}
        self._ignored: set[str] = set()
        self._inbox_missing_logged = False
        self._processed: set[str] = self._load_processed()

    def _load_processed(self) -> set[str]:
        return self.service.job_ids(SOURCE, HISTORY_LIMIT)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        log.info("watching %s for NAME.%s%s (every %.2g s)", self.inbox, "|".join(self._instruments),
                 "|".join(AUDIO_EXTENSIONS), self.interval)
        while not stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("inbox: poll of %s failed", self.inbox)

    def poll_once(self, now: float | None = None) -> list[Job]:
        """One scan of the inbox; returns the jobs it submitted."""
        now = time.time() if now is None else now
        try:
            with os.scandir(self.inbox) as it:
                entries = list(it)
        except OSError as e:
            if not self._inbox_missing_logged:
                log.warning("inbox: cannot read %s (%s); waiting for it", self.inbox, e.strerror or e)
                self._inbox_missing_logged = True
            if isinstance(e, FileNotFoundError):
                self.service.ensure_home()  # deleted while we run: the service makes the folders again
            return []
        self._inbox_missing_logged = False

        candidates: list[tuple[str, str, str, int, int]] = []  # file name, NAME, instrument, size, mtime_ns
        sidecars: dict[str, tuple[int, int]] = {}
        markers: dict[str, int] = {}  # NAME -> mtime_ns of NAME.ready
        for entry in entries:
            kind, detail = self._classify(entry.name)
            try:
                if kind == "audio":
                    if not entry.is_file():
                        self._ignore(entry.name, logging.INFO, "not a regular file")
                        continue
                    st = entry.stat()
                    candidates.append((entry.name, *detail, st.st_size, st.st_mtime_ns))
                elif kind == "sidecar":
                    if entry.is_file():
                        st = entry.stat()
                        sidecars[detail[0]] = (st.st_size, st.st_mtime_ns)
                    self._ignore(entry.name, logging.DEBUG, "a sidecar, not a job")
                elif kind == "marker":
                    if entry.is_file():
                        markers[detail[0]] = entry.stat().st_mtime_ns
                    self._ignore(entry.name, logging.DEBUG, "a ready marker, not a job")
                else:
                    self._ignore(entry.name, *detail)
            except OSError:  # vanished or unreadable between scandir and stat: look again next poll
                continue

        present = {e.name for e in entries}
        for table in (self._seen, self._refused):
            for gone in [n for n in table if n not in present]:
                del table[gone]
        self._ignored &= present

        jobs = []
        for file_name, name, instrument, size, mtime_ns in candidates:
            job = self._consider(now, file_name, name, instrument, size, mtime_ns, sidecars.get(name),
                                 markers.get(name))
            if job is not None:
                jobs.append(job)
        return jobs

    # -- names ------------------------------------------------------------------------------
    def _classify(self, file_name: str) -> tuple[str, tuple]:
        lower = file_name.lower()
        if file_name.startswith("."):
            return "ignore", (logging.DEBUG, "hidden file")
        if lower.endswith(TEMP_SUFFIXES):
            return "ignore", (logging.DEBUG, "temporary file")
        if lower.endswith(".json"):
            return "sidecar", (file_name[:-5],)
        if lower.endswith(READY_SUFFIX):
            return "marker", (file_name[:-len(READY_SUFFIX)],)
        stem, ext = os.path.splitext(file_name)
        name, _, instrument = stem.rpartition(".")
        hint = f"name it NAME.{'|'.join(self._instruments)}.EXT, EXT one of {' '.join(AUDIO_EXTENSIONS)}"
        if ext.lower() not in AUDIO_EXTENSIONS:
            return "ignore", (logging.INFO, f"not a supported audio file ({hint})")
        if not name or instrument.lower() not in self._instruments:
            return "ignore", (logging.INFO, f"no instrument in the name ({hint})")
        return "audio", (name, instrument.lower())

    def _ignore(self, file_name: str, level: int, why: str) -> None:
        if file_name not in self._ignored:
            self._ignored.add(file_name)
            log.log(level, "inbox: ignored %s: %s", show_name(file_name), why)

    # -- one candidate ----------------------------------------------------------------------
    def _consider(self, now: float, file_name: str, name: str, instrument: str, size: int, mtime_ns: int,
                  sidecar: tuple[int, int] | None, marker: int | None = None) -> Job | None:
        job_id = inbox_job_id(file_name, name, size, mtime_ns)
        if job_id in self._processed:
            self._seen.pop(file_name, None)
            return None
        sig: _Sig = (size, mtime_ns, sidecar)
        refused = self._refused.get(file_name)
        if refused is not None and refused.sig == sig and not self._refusal_cleared(refused, now):
            return None
        newest_ns = max(mtime_ns, sidecar[1] if sidecar else 0)
        if marker is not None and marker >= newest_ns and size > 0:
            pass  # NAME.ready, written after the file (and its sidecar): complete now
        else:
            seen = self._seen.get(file_name)
            if seen is None or seen.sig != sig:
                self._seen[file_name] = _Seen(sig, now)
                return None  # new or still changing
            if size == 0:
                return None
            newest = newest_ns / 1e9
            age = now - newest if newest <= now else now - seen.since
            if age < self.settle:
                return None
        try:
            job = self._submit(file_name, name, instrument, job_id, refused.code if refused else None)
        except _Refused as e:
            self._refused[file_name] = _Refusal(sig, e.code, now)
            return None
        except Exception:
            log.exception("inbox: %s: unexpected error; left alone until the file changes", show_name(file_name))
            self._refused[file_name] = _Refusal(sig, "error", now)
            return None
        self._processed.add(job_id)
        self._refused.pop(file_name, None)
        self._seen.pop(file_name, None)
        return job

    def _refusal_cleared(self, refusal: _Refusal, now: float) -> bool:
        if refusal.code == "no_tempo":
            return self.service.current_tempo() is not None
        if refusal.code == "queue_full":
            return self.service.has_room()
        if refusal.code == "disk_full":
            return now - refusal.at >= DISK_FULL_RETRY_S
        return False

    def _submit(self, file_name: str, name: str, instrument: str, job_id: str, refused_before: str | None = None
                ) -> Job:
        path = self.inbox / file_name
        shown = show_name(file_name)
        options = self._read_sidecar(shown, name)
        bars = options.pop("bars", None)
        try:
            if bars is not None:
                bars = P.check_bars(bars)
            opts = P.parse_options(options)
        except P.ProtocolError as e:
            log.warning("inbox: %s: sidecar %s.json has a bad value: %s Fix it to retry.", shown, show_name(name), e)
            raise _Refused("bad_sidecar", str(e)) from None
        from_length = bars is None
        if bars is None:
            bars = self._bars_from_length(shown, show_name(name), path, opts)
        req = P.make_request(job_id, str(path), instrument, bars, opts)
        try:
            job = self.service.submit(req, source=SOURCE, name=name)
        except P.ProtocolError as e:
            level = logging.INFO if e.code in ("no_tempo", "queue_full") else logging.WARNING
            if e.code == refused_before:  # a refusal retried by itself (disk_full): said once already
                level = logging.DEBUG
            log.log(level, "inbox: %s: not started (%s): %s", shown, e.code, show_name(str(e)))
            raise _Refused(e.code, str(e)) from None
        spec = job.spec
        log.info("inbox: %s -> job %s (%s, %d bars at %s bpm from %s%s)", shown, job.id, instrument, spec.bars,
                 spec.bpm, spec.tempo_source, "; bars from the file's length" if from_length else "")
        return job

    def _read_sidecar(self, file_name: str, name: str) -> dict[str, Any]:
        """`file_name`: as shown in the log."""
        sidecar = self.inbox / f"{name}.json"
        try:
            with open_regular(sidecar, self.service.roots) as f:
                text = f.read().decode("utf-8")
        except FileNotFoundError:
            return {}
        except OutsideRoots as e:
            log.warning("inbox: %s: not started (forbidden_path): its sidecar %s is not read: %s", file_name,
                        show_name(sidecar.name), show_name(e.strerror))
            raise _Refused("forbidden_path", str(e)) from None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("inbox: %s: cannot read its sidecar %s (%s). Fix it to retry.", file_name,
                        show_name(sidecar.name), getattr(e, "strerror", None) or e)
            raise _Refused("bad_sidecar", str(e)) from None
        try:
            data = json.loads(text)
        except ValueError as e:
            log.warning("inbox: %s: sidecar %s is not valid JSON (%s). Fix it to retry.", file_name,
                        show_name(sidecar.name), e)
            raise _Refused("bad_sidecar", str(e)) from None
        if not isinstance(data, dict):
            log.warning("inbox: %s: sidecar %s must be a JSON object like {\"bpm\": 120, \"bars\": 8}. "
                        "Fix it to retry.", file_name, show_name(sidecar.name))
            raise _Refused("bad_sidecar", "not an object")
        unknown = sorted(k for k in data if k not in SIDECAR_KEYS)
        if unknown:
            log.warning("inbox: %s: sidecar %s: ignored unknown key(s) %s (known: %s)", file_name,
                        show_name(sidecar.name),
                        ", ".join(map(repr, unknown)), ", ".join(SIDECAR_KEYS))
        return {k: data[k] for k in SIDECAR_KEYS if k in data and data[k] is not None}

    def _bars_from_length(self, file_name: str, name: str, path: Path, opts: dict[str, Any]) -> int:
        """`file_name`, `name`: as shown in the log."""
        import soundfile as sf

        try:
            with open_regular(path, self.service.roots) as f:
                info = sf.info(f)
        except OutsideRoots as e:
            log.warning("inbox: %s: not started (forbidden_path): %s; a symlink may not lead out of the daemon's "
                        "folders", file_name, show_name(e.strerror))
            raise _Refused("forbidden_path", str(e)) from None
        except NotRegularFile as e:
            log.warning("inbox: %s: not read: %s", file_name, e.strerror)
            raise _Refused("not_audio", str(e)) from None
        except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/OSError
            log.warning("inbox: %s: cannot read it as audio (%s)", file_name, e)
            raise _Refused("not_audio", str(e)) from None
        ambient = self.service.current_tempo()
        bpm = opts["bpm"] if opts["bpm"] is not None else (ambient.bpm if ambient else None)
        if bpm is None:
            message = (f"no tempo for {file_name}: put \"bpm\" in {name}.json, "
                       "or send /stage/tempo, or run a MIDI clock into the daemon.")
            log.info("inbox: %s: not started (no_tempo): %s", file_name, message)
            raise _Refused("no_tempo", message)
        bpb = opts["beats_per_bar"] or (ambient.beats_per_bar if ambient else None) or DEFAULT_METER
        unit = opts["beat_unit"] or (ambient.beat_unit if ambient else None) or DEFAULT_METER
        if info.frames <= 0 or info.samplerate <= 0:
            log.warning("inbox: %s: contains no audio", file_name)
            raise _Refused("empty_audio", "no frames")
        return default_bars(info.frames, info.samplerate, bpm, bpb, unit, opts["offset"])
