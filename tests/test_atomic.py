"""atomic.py: files appear complete or not at all; create refuses to overwrite, replace swaps.

Creating takes is covered through `write_audio_atomic` in test_audio_io; here the replace mode
(checkpoints, run state, caches) and `copy_atomic` (publishing a checkpoint's weights).
"""

from __future__ import annotations

import os
import stat

import pytest

from stage_bridge.atomic import copy_atomic, write_atomic
from stage_bridge.errors import OutputNotWritable


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_replace_swaps_the_old_file_for_the_new_one(tmp_path):
    target = tmp_path / "split.json"
    target.write_bytes(b"old")
    assert write_atomic(target, lambda f: f.write(b"new"), replace=True) == target
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert _names(tmp_path) == ["split.json"]


def test_replace_creates_a_missing_file(tmp_path):
    write_atomic(tmp_path / "metrics.csv", lambda f: f.write(b"step\n"), replace=True)
    assert (tmp_path / "metrics.csv").read_bytes() == b"step\n"


@pytest.mark.parametrize("error", [RuntimeError("writer crashed"), KeyboardInterrupt()])
def test_replace_failing_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, error):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the last good weights")

    def half_then_fail(f):
        f.write(b"half of the new wei")
        raise error

    with pytest.raises(type(error)):
        write_atomic(target, half_then_fail, replace=True)
    assert target.read_bytes() == b"the last good weights"
    assert _names(tmp_path) == ["model.safetensors"]


def test_replace_disk_full_is_output_not_writable_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "trainer_state.pt"
    target.write_bytes(b"old state")

    def full_disk(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputNotWritable, match="No space left"):
        write_atomic(target, full_disk, replace=True)
    assert target.read_bytes() == b"old state"
    assert _names(tmp_path) == ["trainer_state.pt"]


def test_without_replace_an_existing_file_is_never_touched(tmp_path):
    target = tmp_path / "take1.wav"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_atomic(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"precious" and _names(tmp_path) == ["take1.wav"]


@pytest.mark.parametrize("new_file", [False, True])
def test_the_file_can_be_written_by_name(tmp_path, new_file):
    """Writers that only take a file name write to `file.name`, the hidden temp; safetensors'
    `save_file` even puts a new private (0600) file there, which must still end up 0644."""
    seen = []

    def by_name(f):
        seen.append(os.path.basename(f.name))
        if new_file:
            os.unlink(f.name)
        with open(os.open(f.name, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as other:
            other.write(b"written by name")

    write_atomic(tmp_path / "model.safetensors", by_name, replace=True)
    target = tmp_path / "model.safetensors"
    assert target.read_bytes() == b"written by name"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert seen[0].startswith(".model.safetensors.") and seen[0].endswith(".part")
    assert _names(tmp_path) == ["model.safetensors"]


def test_copy_publishes_a_hard_link_over_the_old_file(tmp_path):
    src = tmp_path / "step" / "model.safetensors"
    src.parent.mkdir()
    src.write_bytes(b"new weights")
    dst = tmp_path / "model.safetensors"
    dst.write_bytes(b"old weights")
    copy_atomic(src, dst, replace=True)
    assert dst.read_bytes() == b"new weights"
    assert os.path.samefile(src, dst)  # no bytes copied
    assert _names(tmp_path) == ["model.safetensors", "step"]


def test_copy_without_hard_links_copies_the_bytes(tmp_path, monkeypatch):
    def no_links(src, dst, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    src = tmp_path / "step" / "stage_bridge.json"
    src.parent.mkdir()
    src.write_bytes(b"{}")
    dst = tmp_path / "stage_bridge.json"
    dst.write_bytes(b"old")
    copy_atomic(src, dst, replace=True)
    assert dst.read_bytes() == b"{}" and not os.path.samefile(src, dst)
    assert _names(tmp_path) == ["stage_bridge.json", "step"]


def test_copy_without_replace_refuses_an_existing_name(tmp_path):
    src = tmp_path / "a"
    src.write_bytes(b"a")
    dst = tmp_path / "b"
    dst.write_bytes(b"b")
    with pytest.raises(FileExistsError):
        copy_atomic(src, dst)
    assert dst.read_bytes() == b"b" and _names(tmp_path) == ["a", "b"]
