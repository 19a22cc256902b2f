"""The `micromoment` command: one subcommand per stage, each a Hydra app with its own config."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("pipelines.generate", "synthetic journeys with their Bayes-optimal posterior"),
    "train": ("pipelines.train", "features -> LightGBM -> evaluate -> log -> register"),
    "run": ("pipelines.run", "the whole chain on the embedded default (generate, then train)"),
}

USAGE = """usage: micromoment <command> [hydra overrides] [-m for a sweep]

commands:
{commands}

examples:
  micromoment run
  micromoment generate generate.n_journeys=100000
  micromoment train model.params.num_leaves=63 split=time
  micromoment train -m model.params.learning_rate=0.03,0.1
  micromoment train --help        (the command's config and its groups)
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return USAGE.format(commands=lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"micromoment: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # Hydra reads its overrides from sys.argv
    sys.argv = [f"micromoment {name}", *argv[1:]]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
