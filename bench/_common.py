"""Shared by the benchmarks: composed configs, the RESULTS.md layout and run metadata."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.config import CONF_DIR
from pipelines.config.schema import register_configs
from pipelines.core.synthetic import GeneratorParams

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_RESULTS = BENCH_DIR / "RESULTS.md"

# the sections of RESULTS.md, in file order; each benchmark rewrites only its own
SECTIONS = ("bench_training", "bench_generate")

HEADER = """\
# Benchmark results

Each section below is rewritten by the benchmark that owns it, with the command, date and
machine that produced it. Timings come from a shared 2-core machine and are noisy: read shares
and ratios, not absolute seconds.

- **Training** (`bench/bench_training.py`, also `make bench`): generates synthetic sessions
  (200k by default) with their Bayes-optimal posterior, then runs the training recipe
  (`pipelines.stages.train.train` on the configured engine: validate, features, LightGBM with early stopping, evaluate; nothing
  is logged to MLflow). It compares the model with the Bayes-optimal posterior, a logistic
  regression and the majority class on the test split (target: model accuracy >= 97% of the
  Bayes-optimal accuracy), and reports each stage's share of the time.
- **Generation memory** (`bench/bench_generate_memory.py`): runs `micromoment generate`'s
  `generate()` for 1M and for 10M sessions, each in a fresh process, and compares their peak
  resident memory (target: the larger run peaks at <= 1.3x the smaller one, i.e. memory stays
  flat as the size grows) and their throughput in sessions per second.

Rerun from the repository root with the project's virtualenv:

```bash
python bench/bench_training.py                 # or: make bench
python bench/bench_generate_memory.py          # --large 3000000 on a slow machine
```

Both accept `--help`; `--out` writes elsewhere than `bench/RESULTS.md`.
"""


def compose_config(config_name: str, overrides: list[str] | None = None) -> dict:
    """A primary config composed as the CLI composes it, resolved into a plain dict."""
    register_configs()  # the structured schemas the config groups extend
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides or []))
    return OmegaConf.to_container(cfg, resolve=True)


def journeys_for(sessions: int, generator_cfg: dict) -> int:
    """Journeys to simulate for about `sessions` sessions with this generator config."""
    per_journey = GeneratorParams.from_config(generator_cfg).mean_sessions_per_journey()
    return max(1, round(sessions / per_journey))


def generate_sessions(
    sessions: int,
    out_dir: Path,
    seed: int,
    posterior: bool,
    generator: dict | None = None,
    quiet: bool = False,
) -> dict:
    """About `sessions` synthetic sessions as parquet parts in `out_dir/sessions`, from the
    default world or `generator`; `generate`'s summary with the path, target and seconds."""
    from pipelines.engines.local import generate

    composed = compose_config("generate")
    generator = composed["generator"] if generator is None else generator
    gen_cfg = dict(
        composed["generate"],
        out_dir=str(out_dir),
        n_journeys=journeys_for(sessions, generator),
        chunk_journeys=50_000,
        seed=seed,
        posterior=posterior,
    )
    if not quiet:
        print(f"generating ~{sessions:,} sessions into {out_dir} ...", flush=True)
    start = time.perf_counter()
    summary = generate(gen_cfg, generator)
    summary["seconds"] = time.perf_counter() - start
    summary["path"] = str(Path(out_dir) / "sessions")
    summary["target"] = sessions
    if not quiet:
        print(f"  {summary['sessions']:,} sessions in {summary['seconds']:.1f} s", flush=True)
    return summary


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


def _placeholder(section: str) -> str:
    start, end = markers(section)
    return f"{start}\n_not run yet_\n{end}\n"


def write_section(path: str | os.PathLike, section: str, body: str) -> Path:
    """Replace the text between the section's markers in `path` (created if missing).

    Everything outside the markers, including the other benchmarks' sections, is kept.
    """
    path = Path(path)
    if path.exists():
        text = path.read_text()
    else:
        text = HEADER + "".join(f"\n{_placeholder(s)}" for s in SECTIONS)
    start, end = markers(section)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command as typed from the repository root."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"bench/{Path(script).name}", *args])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _code_version() -> str:
    """The git commit, and whether the package or its configs differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "pipelines", "conf")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}" + (" with uncommitted changes in pipelines/ or conf/" if dirty else "")


def run_metadata() -> list[str]:
    """Markdown bullet lines: date, machine, Python and code version."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- date: {now}",
        f"- machine: {os.cpu_count()} cores ({_cpu_model()}), {platform.system()} "
        f"{platform.machine()}, shared and noisy",
        f"- Python {platform.python_version()}, code at commit {_code_version()}",
    ]


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"
