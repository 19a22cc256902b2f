"""The `micromoment` command: one subcommand per stage, each a Hydra app with its own config."""

from __future__ import annotations

import importlib
import sys

from pipelines.stages import runner

COMMANDS = {
    "generate": (
        "pipelines.stages.generate:main",
        "synthetic journeys with their Bayes-optimal posterior",
    ),
    "train": (
        "pipelines.stages.train:main",
        "features -> LightGBM -> evaluate -> log -> register as @challenger",
    ),
    "tune": (
        "pipelines.stages.tune:main",
        "hyperparameter search (Optuna), one child run per trial; resumable",
    ),
    "promote": ("pipelines.stages.promote:main", "the champion/challenger gate on held-out data"),
    "rollback": (
        "pipelines.stages.rollback:main",
        "point @champion back at an earlier version",
    ),
    "retrain": (
        "pipelines.stages.retrain:main",
        "scheduled job: new window -> challenger -> gate -> promote or keep",
    ),
    "score": (
        "pipelines.stages.score:main",
        "batch-score sessions and journeys with a registered model",
    ),
    "touchpoints": (
        "pipelines.stages.touchpoints:main",
        "the touchpoint feed, a budgeted allocation and a report for marketers",
    ),
    "outcomes": (
        "pipelines.stages.outcomes:main",
        "the synthetic world's answer to a feed: contacts, clicks, conversions, returns",
    ),
    "measure": (
        "pipelines.stages.measure:main",
        "what a feed earned: moment metrics, cohorts and uplift with intervals, and a report",
    ),
    "export": (
        "pipelines.stages.export:main",
        "write a registered model to models/ as a standalone folder",
    ),
    "serve": (
        "pipelines.stages.serve:main",
        "the real-time scorer: MLflow's /invocations, batching, following @champion",
    ),
    "run": (
        "pipelines.stages.run:main",
        "the whole chain on the embedded default (generate, train, gate)",
    ),
}

USAGE = """usage: micromoment <command> [hydra overrides] [-m for a sweep]

commands:
{commands}

examples:
  micromoment run
  micromoment generate generate.n_journeys=100000
  micromoment train model.params.num_leaves=63 split=time
  micromoment train -m model.params.learning_rate=0.03,0.1
  micromoment tune tune.n_trials=20          (rerun the same command to resume)
  micromoment promote                        (judge @challenger against @champion)
  micromoment score score.input=data/new_sessions.parquet score.output=scores/today
  micromoment touchpoints feed.input=data/new_sessions.parquet touchpoints.budget=5000
  micromoment outcomes                       (the synthetic world answers the feed)
  micromoment measure measure.outcomes=exports/outcomes.csv
  micromoment rollback                       (or rollback.to_version=3)
  micromoment export
  micromoment serve serve.port=8080          (the real-time scorer, following @champion)

micromoment <command> --help shows what a command does, examples, its config groups and config,
and where it writes. Each run's log and composed config go to outputs/<command>/<date>/<time>/
(a sweep's to multirun/<command>/<date>/<time>/<job number>/).
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

    try:
        # before Hydra, which records the command line in its output folder
        runner.refuse_secrets_in_args(argv[1:])
    except runner.UserError as err:
        print(f"micromoment {name}: error: {err}", file=sys.stderr, flush=True)
        return err.code
    module_name, func = COMMANDS[name][0].split(":")
    entry = getattr(importlib.import_module(module_name), func)
    # Hydra reads its overrides from sys.argv
    sys.argv = [f"micromoment {name}", *argv[1:]]
    try:
        entry()
    except SystemExit as exit_:
        if exit_.code == 1 and not runner.STARTED["value"]:
            # Hydra refused the config before the command ran (its message is printed above)
            return runner.EXIT_USAGE
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
