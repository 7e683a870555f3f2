"""Moving a file to the platform's trash, so "delete" on the control room can be undone.

Why not unlink: a musician who deletes the wrong take from a web page must be able to get it
back the way they get any file back, from the desktop's trash.

- Linux and other freedesktop systems: the FreeDesktop.org Trash specification 1.0
  (https://specifications.freedesktop.org/trash-spec/1.0/): the home trash `$XDG_DATA_HOME/Trash`
  (default `~/.local/share/Trash`) with `files/` and `info/`; for each trashed file an
  `info/NAME.trashinfo` ("[Trash Info]", `Path=` the original absolute path, URL-escaped, and
  `DeletionDate=` local time as YYYY-MM-DDThh:mm:ss) is created first, with O_EXCL to claim the
  name, then the file is renamed to `files/NAME`. A file on another device than the home trash
  goes to that device's `$topdir/.Trash-$uid` (the spec's second top-directory method).
- macOS: moved into `~/.Trash` under a free name (what the Finder's trash is).
- Windows: refused with a message saying to delete the file in Explorer (the Recycle Bin API is
  not tested here).
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import sys
from pathlib import Path
from urllib.parse import quote

from ..errors import StageError


class TrashUnavailable(StageError):
    """The file cannot be moved to a trash here; it is left where it was."""

    code = "trash_unavailable"


def trash(path: Path) -> Path:
    """Move `path` (a file) to the platform's trash; returns where it went."""
    path = Path(path).absolute()
    if sys.platform == "win32":
        raise TrashUnavailable(f"moving to the Recycle Bin is not supported on Windows yet; delete {path} in "
                               "Explorer if you no longer want it.")
    if sys.platform == "darwin":
        return _move_unique(path, Path.home() / ".Trash")
    return freedesktop_trash(path)


def _move_unique(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        target = folder / (path.name if n == 1 else f"{path.stem} {n}{path.suffix}")
        if not target.exists() and not target.is_symlink():
            os.rename(path, target)
            return target
    raise TrashUnavailable(f"{folder} has no free name for {path.name}")


def home_trash() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "Trash"


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def freedesktop_trash(path: Path, trash_dir: Path | None = None) -> Path:
    """The Trash spec's steps for `path`; `trash_dir` overrides the home trash (tests)."""
    trash_dir = trash_dir or home_trash()
    (trash_dir / "files").mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.stat(trash_dir).st_dev != os.stat(path).st_dev:  # the spec: another device has its own trash
        trash_dir = _mount_point(path) / f".Trash-{os.getuid()}"
        (trash_dir / "files").mkdir(parents=True, exist_ok=True, mode=0o700)
    (trash_dir / "info").mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    for n in range(1, 10_000):
        name = path.name if n == 1 else f"{path.stem}.{n}{path.suffix}"
        info = trash_dir / "info" / f"{name}.trashinfo"
        try:
            fd = os.open(info, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"[Trash Info]\nPath={quote(str(path))}\nDeletionDate={stamp}\n")
        target = trash_dir / "files" / name
        if target.exists() or target.is_symlink():  # a files/ entry without its info: not ours to replace
            info.unlink()
            continue
        try:
            os.rename(path, target)
        except OSError as e:
            info.unlink(missing_ok=True)
            if e.errno == errno.EXDEV:
                raise TrashUnavailable(f"{path} is on another disk than the trash; delete it in your file "
                                       "manager.") from None
            raise
        return target
    raise TrashUnavailable(f"the trash {trash_dir} has no free name for {path.name}")
