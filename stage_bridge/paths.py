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
