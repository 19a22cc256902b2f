"""Where the Hydra configs live, shared by every command."""

from __future__ import annotations

from pathlib import Path

# conf/ sits beside the package in the source tree (the project is installed editable)
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
