"""Per-user folders, following each platform's convention (no global state: computed on call)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def user_data_dir(app: str = "stage-bridge") -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / app
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / app
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / app


def user_config_dir(app: str = "stage-bridge") -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / app
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / app
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / app


def user_cache_dir(app: str = "stage-bridge") -> Path:
    """Files that can be rebuilt but are worth keeping across runs (compiled decode steps).
    macOS: ~/Library/Caches (Apple's File System Programming Guide); Windows: LOCALAPPDATA;
    elsewhere the XDG Base Directory spec's XDG_CACHE_HOME, default ~/.cache."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / app
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / app / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / app
