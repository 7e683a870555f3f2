"""Publishing a file so that it appears complete or not at all.

The bytes go to a hidden `.<name>.<random>.part` file in the destination folder (same
filesystem; a name no DAW or folder watcher mistakes for audio), are fsynced, then the temp
file gets the final name in one step and the folder is fsynced. On any failure, Ctrl-C
included, the temp file is removed. A crash or a full disk therefore never leaves a truncated
take, checkpoint or cache file under a real name.

Two ways to publish:
- create (the default; takes and their sidecars): the temp file is hard-linked to the final
  name, which fails if that name exists, so nothing a musician made is ever overwritten. Where
  hard links are unsupported (FAT, some network shares) we rename after checking the name is
  free.
- replace (training checkpoints, run state, token caches): an atomic rename over the old file;
  a reader sees the old file or the new one, never a mix, and a failed write leaves the old one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import OutputNotWritable

FILE_MODE = 0o644  # readable by the DAW whatever user it runs as; mkstemp alone gives 0600


def write_atomic(path: Path, write: Callable[[BinaryIO], None], *, replace: bool = False) -> Path:
    """Publish `path` with the bytes `write(file)` produces.

    FileExistsError if `path` exists, unless `replace`: then the old file is swapped for the new
    one. OutputNotWritable when the folder is missing or the bytes cannot be written. `file` is
    a seekable binary file whose `name` is the temp file's path, so a writer that only takes a
    file name can write there by name, even one that puts a new file in its place (safetensors'
    `save_file` does): the mode and the fsync are applied to whatever file has that name then.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputNotWritable(f"The output folder {folder} does not exist. Create it or choose another output folder.")
    if not replace and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise not_writable(folder, exc) from exc
    os.close(fd)  # reopened by name below, so that `handle.name` is the temp file's path
    tmp = Path(tmp_name)
    try:
        with open(tmp, "w+b") as handle:
            write(handle)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "r+b") as written:  # write access: Windows cannot fsync a read-only handle
            os.fsync(written.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise not_writable(folder, exc) from exc
        raise
    return _publish_temp(tmp, path, replace)


def copy_atomic(src: Path, path: Path, *, replace: bool = False) -> Path:
    """Publish the complete file `src` under the name `path` too, like `write_atomic`.

    A hard link where the filesystem has them, so a multi-gigabyte checkpoint is published
    without copying a byte (both names then share the data: `src` must not be modified
    afterwards); elsewhere a copy of the bytes.
    """
    src, path = Path(src), Path(path)
    folder = path.parent
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}.part"
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here (or across these folders): copy the bytes
        with open(src, "rb") as source:
            return write_atomic(path, lambda out: shutil.copyfileobj(source, out), replace=replace)
    return _publish_temp(tmp, path, replace)


def _publish_temp(tmp: Path, path: Path, replace: bool) -> Path:
    """Give the complete temp file `tmp` its final name, then remove the temp name in any case."""
    folder = path.parent
    try:
        _publish(tmp, path, replace)
    except FileExistsError:
        raise
    except OSError as exc:
        raise not_writable(folder, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(folder)
    return path


def _publish(tmp: Path, final: Path, replace: bool) -> None:
    if replace:
        os.replace(tmp, final)
        return
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
