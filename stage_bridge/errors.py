"""One exception type per failure kind.

Every error a musician can cause (or fix) derives from `StageError`. Each carries a short
machine-readable `code` (the OSC protocol sends it as-is) and a message that says what to do
next. The CLI prints `error: <message>` and exits with status 2 for these; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class StageError(Exception):
    """Base class of every expected, user-facing failure."""

    code = "error"


class BadArgument(StageError):
    """A parameter is out of range or of the wrong kind (bpm, bars, instrument, ...)."""

    code = "bad_argument"


class AudioFileMissing(StageError):
    """The context file does not exist."""

    code = "file_missing"


class NotAudio(StageError):
    """The file exists but cannot be decoded as audio."""

    code = "not_audio"


class EmptyAudio(StageError):
    """The audio has no samples (or only silence where sound is required)."""

    code = "empty_audio"


class NonFiniteAudio(StageError):
    """The audio contains NaN or infinite samples."""

    code = "non_finite_audio"


class OutputNotWritable(StageError):
    """The output folder is missing and cannot be created, or is not writable."""

    code = "output_not_writable"


class WeightsMissing(StageError):
    """Model weights are not on disk; the message lists the files and where they go."""

    code = "weights_missing"


class CheckpointError(StageError):
    """A checkpoint was found but its keys or shapes do not match the expected layout."""

    code = "bad_checkpoint"


class DeviceUnavailable(StageError):
    """The requested compute device (cuda, mps) is not available on this machine."""

    code = "device_unavailable"


class CompileUnavailable(StageError):
    """`--compile` was asked for where the decode step cannot be compiled (no C++ compiler,
    not the CPU, not fp32)."""

    code = "compile_unavailable"


class TooLarge(StageError):
    """The request needs more memory than this machine has free; refused before it runs, with the
    largest request that fits in the message."""

    code = "too_large"


class OutOfMemory(StageError):
    """An allocation failed while generating (RAM or GPU): nothing was written."""

    code = "out_of_memory"


class Cancelled(StageError):
    """A generation was cancelled by the user; no file is written."""

    code = "cancelled"


class DiskFull(OutputNotWritable):
    """The disk (or the user's quota) is full: nothing was written; free some space and try again.

    A subclass of OutputNotWritable, so code that handles "cannot write there" handles this too,
    but with its own code: the musician's fix is to free space, not to pick another folder."""

    code = "disk_full"


class ForbiddenPath(StageError):
    """The file actually opened lies outside the folders the daemon may read (a symlink swapped in)."""

    code = "forbidden_path"
