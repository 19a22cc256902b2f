"""Every command's default output folder is ignored by git, so `make demo` followed by
`git add -A` commits no run output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_KEYS = ("output", "out_dir")


def _default_outputs() -> dict[str, str]:
    """`<file>: <section>.<key>` -> the folder it names, for plain (uninterpolated) values."""
    found = {}
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        doc = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        for section, block in doc.items():
            if not isinstance(block, dict):
                continue
            for key in OUTPUT_KEYS:
                value = block.get(key)
                if isinstance(value, str) and "${" not in value:
                    found[f"{path.relative_to(ROOT)}: {section}.{key}"] = value
    return found


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_every_default_output_folder_is_ignored_by_git():
    outputs = _default_outputs()
    # the commands that write run outputs by default
    assert {"measure/latest", "outcomes/latest", "touchpoints/latest", "scores/latest"} <= set(
        outputs.values()
    ), outputs
    tracked = []
    for where, folder in outputs.items():
        # `output` is the run's folder; `out_dir` holds a folder a run (`export`: <name>-v<n>)
        probe = f"{folder}/summary.json" if where.endswith(".output") else f"{folder}/run/file"
        checked = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT, check=False)
        if checked.returncode != 0:
            tracked.append(f"{where} = {folder}")
    assert not tracked, f"not ignored by .gitignore: {tracked}"
