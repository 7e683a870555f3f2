"""Shared fixtures: tiny models and helpers (CPU, fp32, no network)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present (tests never require it)")
    return SHARED


def require_tool(name: str) -> str:
    """Path of an external program; skip when missing, but fail in CI (STAGE_BRIDGE_CI=1)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("STAGE_BRIDGE_CI") == "1":
            pytest.fail(f"{name} is required in CI but not installed")
        pytest.skip(f"{name} not installed")
    return path
