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

A full disk (or quota) is reported as `DiskFull`, so the musician is told to free space rather
than to pick another folder (`is_disk_full` is the one test for it, SQLite's "disk is full" included).

Reading files other programs control (a context, an inbox file, a sidecar) is the mirror image:
`open_regular` opens without blocking and then checks what was opened, not the name. A name
can be swapped between any check and the read (for a FIFO, whose open would wait forever for a
writer; for a symlink to a file outside the allowed folders), so every such reader goes through it.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import sqlite3
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from .errors import DiskFull, OutputNotWritable

FILE_MODE = 0o644  # readable by the DAW whatever user it runs as; mkstemp alone gives 0600


def temp_name(name: str) -> str:
    """The longest name a file's hidden temp file gets while it is written (`.NAME.XXXXXXXX.part`:
    tempfile's 8 random characters, or 8 hex digits): a name is only usable if this one is."""
    return f".{name}.XXXXXXXX.part"


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


DISK_FULL_ERRNOS = frozenset(filter(None, (errno.ENOSPC, getattr(errno, "EDQUOT", None))))
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


def is_disk_full(exc: BaseException) -> bool:
    """The write failed for want of space (or quota): ENOSPC, EDQUOT or SQLite's SQLITE_FULL."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full(folder: Path, exc: BaseException) -> DiskFull:
    reason = getattr(exc, "strerror", None) or str(exc)
    return DiskFull(f"The disk holding {folder} is full ({reason}); nothing was written. Free some space, "
                    "then try again.")


def not_writable(folder: Path, exc: BaseException) -> OutputNotWritable:
    if is_disk_full(exc):
        return disk_full(folder, exc)
    reason = getattr(exc, "strerror", None) or str(exc)
    return OutputNotWritable(f"Could not write into {folder} ({reason}). Check that the folder is writable and the "
                             "disk is not full, or choose another output folder.")


# -- reading files other programs control -------------------------------------------------------

class NotRegularFile(OSError):
    """What was opened is a folder, FIFO, socket or device, not a file to read."""


class OutsideRoots(PermissionError):
    """The file (after following every symlink) lies outside the folders we may read."""


def open_regular(path: str | os.PathLike[str], inside: Sequence[Path] | None = None) -> BinaryIO:
    """Open `path` for reading, refusing anything but a regular file, without ever blocking.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; then the
    open descriptor (not the name, which may have been swapped meanwhile) must be a regular
    file, and blocking mode is restored. With `inside` (resolved folders), the name is checked
    before opening (an outside target is never opened, so a device or FIFO there cannot stall
    us) and the file actually opened is checked again afterwards. Raises FileNotFoundError,
    `NotRegularFile`, `OutsideRoots` or another OSError.
    """
    if inside is not None:
        _check_inside(Path(os.path.realpath(path)), inside, path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe, socket or device"
            raise NotRegularFile(errno.EINVAL, f"{kind}, not a regular file", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        if inside is not None:
            _check_inside(opened_path(fd, path, st), inside, path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def opened_path(fd: int, name: str | os.PathLike[str], st: os.stat_result | None = None) -> Path:
    """Where the open file `fd` really is: the kernel's answer (/proc/self/fd on Linux, F_GETPATH
    on macOS); elsewhere `name` resolved now, accepted only if that is the very file open."""
    if sys.platform.startswith("linux"):
        # proc_pid_fd(5): each entry "is a symbolic link to the actual file"
        # (man7.org/linux/man-pages/man5/proc_pid_fd.5.html)
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    if sys.platform == "darwin":
        import fcntl

        # fcntl(2) on macOS: F_GETPATH "Get the path of the file descriptor" into a MAXPATHLEN (1024) buffer;
        # Python exposes it as fcntl.F_GETPATH on macOS since 3.9 (docs.python.org/3/library/fcntl.html);
        # 50 is its value in <sys/fcntl.h>.
        raw = fcntl.fcntl(fd, getattr(fcntl, "F_GETPATH", 50), bytes(1024))
        return Path(os.fsdecode(raw.split(b"\0", 1)[0]))
    # elsewhere (Windows): os.path.samestat compares st_dev/st_ino, which os.fstat and os.stat fill on
    # Windows too (docs.python.org/3/library/os.html#os.stat_result: st_ino is the file index there)
    real = Path(os.path.realpath(name))
    st = st or os.fstat(fd)
    try:
        same = os.path.samestat(st, os.stat(real))
    except OSError:
        same = False
    if not same:
        raise OutsideRoots(errno.EACCES, "the file was replaced while it was being opened", str(name))
    return real


def _check_inside(real: Path, roots: Sequence[Path], name: str | os.PathLike[str]) -> None:
    if not any(real == r or r in real.parents for r in roots):
        raise OutsideRoots(errno.EACCES, f"it is {real}, outside the folders that may be read", str(name))
