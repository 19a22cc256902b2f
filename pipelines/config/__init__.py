"""Where the Hydra configs live, shared by every command."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# an installed wheel carries the configs as pipelines/conf; a checkout keeps them in conf/ beside
# the package. Users add their own (a dataset config, say) with `--config-dir DIR`.
CONF_DIR = str(
    _PACKAGE / "conf" if (_PACKAGE / "conf" / "train.yaml").is_file() else _PACKAGE.parent / "conf"
)


def hydra_main(config_name: str):
    """`hydra.main` for a micromoment command, with the config schemas registered first."""
    import hydra

    from pipelines.config.schema import register_configs

    register_configs()
    return hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
