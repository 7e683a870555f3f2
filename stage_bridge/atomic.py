"""Publishing a file so that it appears complete or not at all, and never over another file.

The bytes go to a hidden `.<name>.<random>.part` file in the destination folder (same
filesystem; a name no DAW or folder watcher mistakes for audio), are fsynced, then the temp
file is hard-linked to the final name, which fails if that name exists. Where hard links are
unsupported (FAT, some network shares) we rename after checking the name is free. On any
failure the temp file is removed. Used for takes, their sidecars and checkpoints alike.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import OutputNotWritable

FILE_MODE = 0o644  # readable by the DAW whatever user it runs as; mkstemp alone gives 0600


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Create `path` with the bytes `write(file)` produces. FileExistsError if `path` exists."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputNotWritable(f"The output folder {folder} does not exist. Create it or choose another output folder.")
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise not_writable(folder, exc) from exc
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, FILE_MODE) if hasattr(os, "fchmod") else None
        with os.fdopen(fd, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        raise not_writable(folder, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(folder)
    return path


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(f"{final} already exists; refusing to overwrite it") from None
    except (OSError, NotImplementedError, AttributeError):
        if final.exists() or final.is_symlink():
            raise FileExistsError(f"{final} already exists; refusing to overwrite it") from None
        os.rename(tmp, final)


def fsync_folder(folder: Path) -> None:
    """Persist the new directory entry; best effort, since not every OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def not_writable(folder: Path, exc: BaseException) -> OutputNotWritable:
    reason = getattr(exc, "strerror", None) or str(exc)
    return OutputNotWritable(f"Could not write into {folder} ({reason}). Check that the folder is writable and the "
                             "disk is not full, or choose another output folder.")
