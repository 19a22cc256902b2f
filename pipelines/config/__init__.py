"""Configuration: where the Hydra configs live, and their schemas (`schema`), shared by every
command. Depends on `pipelines.core` at most."""

from __future__ import annotations

from pathlib import Path

import hydra

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
