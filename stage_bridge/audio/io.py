"""Reading and writing audio files.

Everything inside the tool works on float32 arrays shaped ``(channels, n)``; this module is the
only place that knows soundfile's ``(n, channels)`` layout. Loading turns every way a file can
be unusable into one of the `stage_bridge.errors` types, with a message a musician can act on.
Writing is atomic and never overwrites: a DAW may be watching the output folder, so a half
written or replaced take must never be visible there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import soundfile as sf

from stage_bridge.atomic import NotRegularFile, OutsideRoots, open_regular, write_atomic
from stage_bridge.errors import (
    AudioFileMissing,
    BadArgument,
    EmptyAudio,
    ForbiddenPath,
    NonFiniteAudio,
    NotAudio,
)

SUPPORTED_FORMATS = ("WAV", "FLAC", "AIFF", "OGG")
"""Formats we promise to read (soundfile may read more; these are the ones we test)."""

_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
_MAX_CHANNELS = 32  # more than this almost surely means an (n, channels) array was passed


@dataclass(frozen=True, eq=False)
class Audio:
    """Decoded audio: float32 ``samples`` shaped ``(channels, n)`` at ``sample_rate`` Hz.

    ``eq=False`` because element-wise array comparison has no single truth value; compare
    ``samples`` with numpy explicitly instead.
    """

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        if not isinstance(self.samples, np.ndarray) or self.samples.ndim != 2:
            raise ValueError("Audio.samples must be a 2-D numpy array shaped (channels, n)")
        if self.samples.dtype != np.float32:
            raise ValueError(f"Audio.samples must be float32, got {self.samples.dtype}")
        if int(self.sample_rate) != self.sample_rate or self.sample_rate <= 0:
            raise ValueError(
                f"Audio.sample_rate must be a positive integer, got {self.sample_rate!r}"
            )

    @property
    def channels(self) -> int:
        """Number of channels (1 = mono, 2 = stereo)."""
        return int(self.samples.shape[0])

    @property
    def num_samples(self) -> int:
        """Number of sample frames per channel."""
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_samples / self.sample_rate


def load_audio(path: str | os.PathLike[str], inside: Sequence[Path] | None = None) -> Audio:
    """Decode any file soundfile can read into float32 ``(channels, n)``.

    Raises `AudioFileMissing`, `NotAudio`, `EmptyAudio` or `NonFiniteAudio` so the caller can
    show the musician exactly what is wrong with the file they picked. The file is opened with
    `open_regular` (a FIFO or device put in its place never blocks us); with `inside`, the file
    actually opened must lie in one of those folders (`ForbiddenPath` otherwise), which holds
    even if a symlink was swapped in after the path was checked.
    """
    path = Path(path)
    formats = ", ".join(SUPPORTED_FORMATS)
    try:
        handle = open_regular(path, inside)
    except FileNotFoundError:
        raise AudioFileMissing(
            f"{path} does not exist. Check the path, or export the audio from your DAW first."
        ) from None
    except OutsideRoots as exc:
        raise ForbiddenPath(
            f"{path} is not read: {exc.strerror}. Put the audio inside the daemon's folders."
        ) from None
    except NotRegularFile as exc:
        what = "a folder" if exc.strerror.startswith("a folder") else "not a regular file"
        raise NotAudio(f"{path} is {what}, not an audio file. Pick one audio file ({formats}).") from None
    except OSError as exc:
        raise NotAudio(f"{path} cannot be opened ({exc.strerror or exc}).") from None
    try:
        with handle:
            data, sample_rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise NotAudio(
            f"{path} could not be decoded as audio ({exc}). "
            f"Export it from your DAW as one of: {formats}."
        ) from exc
    if data.shape[0] == 0:
        raise EmptyAudio(
            f"{path} contains no audio samples. "
            "Export a section that has some length and try again."
        )
    if not np.isfinite(data).all():
        raise NonFiniteAudio(
            f"{path} contains NaN or infinite sample values (a broken floating-point export). "
            "Re-export it, for example as 24-bit WAV."
        )
    return Audio(samples=np.ascontiguousarray(data.T), sample_rate=int(sample_rate))


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average ``(channels, n)`` down to 1-D float32; 1-D input is returned as a float32 copy.

    The model conditions on a single channel, and a plain mean keeps the level of a centred
    (mono-compatible) mix unchanged.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples.copy()
    if samples.ndim != 2:
        raise ValueError(f"expected 1-D or (channels, n) samples, got shape {samples.shape}")
    return samples.mean(axis=0, dtype=np.float64).astype(np.float32)


def is_silent(samples: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True when the peak level is below ``threshold_db`` dBFS (or there are no samples).

    Used to warn before conditioning on (or delivering) a take with nothing audible in it.
    """
    samples = np.asarray(samples)
    if samples.size == 0:
        return True
    peak = float(np.max(np.abs(samples)))
    if peak == 0.0:
        return True
    return 20.0 * math.log10(peak) < threshold_db


def write_audio_atomic(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    sample_rate: int,
    subtype: str = "PCM_24",
) -> Path:
    """Write WAV (or FLAC, by suffix) so the file appears complete or not at all.

    The data goes to a hidden ``.<name>.<random>.part`` file in the same folder (same
    filesystem, and a name no DAW or file watcher mistakes for audio), is fsynced, then
    published with ``os.link`` which fails instead of replacing an existing file. Where hard
    links are unsupported we fall back to ``os.rename`` after checking the name is free. On any
    failure the temporary file is removed.

    Raises `FileExistsError` if ``path`` exists (callers pick free names),
    `OutputNotWritable` if the folder is missing or cannot be written, `NonFiniteAudio` for
    NaN/inf samples and `BadArgument` for an unsupported suffix or subtype.
    """
    path = Path(path)
    file_format = _format_for(path, subtype)
    frames = _to_frames(samples, subtype)

    def write(handle: BinaryIO) -> None:
        out = _KeepWriteError(handle)
        try:
            sf.write(out, frames, int(sample_rate), subtype=subtype, format=file_format)
        except (sf.LibsndfileError, AssertionError) as exc:  # soundfile asserts on a short write
            raise out.error or OSError(str(exc) or "short write") from exc
        if out.error is not None:  # failed while the header was rewritten at close
            raise out.error

    return write_atomic(path, write)


class _KeepWriteError:
    """The file soundfile writes through, keeping the first OSError of a write.

    soundfile calls `write` from C; an exception raised there is printed and lost, and soundfile
    then sees a short write (an `AssertionError`). Kept here, the real cause (ENOSPC: the disk
    is full) reaches the caller instead."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        return self._kept(lambda: self._handle.write(data), 0)

    def read(self, size: int = -1) -> bytes:
        return self._kept(lambda: self._handle.read(size), b"")

    def seek(self, offset: int, whence: int = 0) -> int:  # flushes the buffer: may hit ENOSPC too
        return self._kept(lambda: self._handle.seek(offset, whence), 0)

    def tell(self) -> int:
        return self._handle.tell()

    def _kept(self, call, failed):  # type: ignore[no-untyped-def]
        if self.error is not None:
            return failed
        try:
            return call()
        except OSError as exc:
            self.error = exc
            return failed


def _format_for(path: Path, subtype: str) -> str:
    """Pick the container from the suffix and check the subtype fits it."""
    file_format = _WRITE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise BadArgument(
            f"Cannot write {path.name}: the output name must end in .wav or .flac."
        )
    if not sf.check_format(file_format, subtype):
        raise BadArgument(
            f"{file_format} files cannot be written as {subtype}. Use PCM_16 or PCM_24"
            + (" (or FLOAT for WAV)." if file_format == "WAV" else ".")
        )
    return file_format


def _to_frames(samples: np.ndarray, subtype: str) -> np.ndarray:
    """Convert our ``(channels, n)`` or 1-D layout to soundfile's ``(n, channels)``."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[np.newaxis, :]
    if samples.ndim != 2 or not 1 <= samples.shape[0] <= _MAX_CHANNELS:
        raise ValueError(f"expected 1-D or (channels, n) samples, got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise NonFiniteAudio(
            "The generated audio contains NaN or infinite values, so nothing was written. "
            "Try generating again (a different seed usually helps)."
        )
    if subtype.upper() not in _FLOAT_SUBTYPES:
        samples = np.clip(samples, -1.0, 1.0)
    return np.ascontiguousarray(samples.T)
