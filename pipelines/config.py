"""Where the Hydra configs live, shared by every command."""

from __future__ import annotations

from pathlib import Path

# conf/ sits beside the package in the source tree (the project is installed editable)
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def hydra_main(config_name: str):
    """`hydra.main` for a micromoment command, with the config schemas registered first."""
    import hydra

    from pipelines.schema import register_configs

    register_configs()
    return hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
