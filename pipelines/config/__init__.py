"""Configuration: where the Hydra configs live, and their schemas (`schema`), shared by every
command. Depends on `pipelines.core` at most."""

from __future__ import annotations

from pathlib import Path

import hydra
import yaml

from pipelines.config.schema import register_configs

_PACKAGE = Path(__file__).resolve().parents[1]
# an installed wheel carries the configs as pipelines/conf; a checkout keeps them in conf/ beside
# the package. Users add their own (a dataset config, say) with `--config-dir DIR`.
CONF_DIR = str(
    _PACKAGE / "conf" if (_PACKAGE / "conf" / "train.yaml").is_file() else _PACKAGE.parent / "conf"
)


def hydra_main(config_name: str):
    """`hydra.main` for a micromoment command, with the config schemas registered first."""
    register_configs()
    return hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")


def command_keys(config_name: str) -> set[str]:
    """The top-level keys a command's config composes (its own keys, its groups, and those of
    the configs it builds on): what its MLflow run records as params, and nothing else."""
    path = Path(CONF_DIR) / f"{config_name}.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    keys = {k for k in data if k not in ("defaults", "hydra")}
    for entry in data.get("defaults", []):
        if isinstance(entry, str):
            if entry == "_self_":
                continue
            name = entry.split("@")[-1] if "@" in entry else entry
            if "/" in entry or "@" in entry:
                keys.add(name.split("/")[-1])
            elif (Path(CONF_DIR) / f"{entry}.yaml").is_file():
                keys |= command_keys(entry)  # a config it builds on (`- train`)
        else:
            for group in entry:
                name = group.removeprefix("override ").strip()
                if name != "hydra":  # Hydra's own settings are not the command's
                    keys.add(name)
    return keys
