"""Generation memory benchmark: peak RSS and throughput of `generate` at two sizes.

Runs `pipelines.engines.local.generate` (what `micromoment generate` runs: journeys simulated, Bayes
posterior computed and parquet parts written a chunk at a time) for a small and a large number of
sessions, each in a fresh Python process, into a temporary folder deleted afterwards. Each child
reports its peak resident set size (VmHWM from /proc/self/status) and its generation time.

The generator promises memory that does not grow with size, so the target is: peak RSS of the
large run <= 1.3x that of the small run. Throughput (sessions per second) of both is reported too.
Writes its own section of bench/RESULTS.md.

    python bench/bench_generate_memory.py                       # 1M and 10M sessions
    python bench/bench_generate_memory.py --large 3000000       # a smaller large run
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    DEFAULT_RESULTS,
    command_line,
    compose_config,
    journeys_for,
    run_metadata,
    write_section,
)

TARGET_RSS_RATIO = 1.3  # peak RSS large / small


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"/proc/self/status has no {field}")


def child(n_journeys: int, chunk_journeys: int, seed: int, out_dir: Path) -> dict:
    """Generate in this process and measure it; runs in the fresh child process."""
    from pipelines.engines.local import generate

    composed = compose_config("generate")
    gen_cfg = dict(
        composed["generate"],
        out_dir=str(out_dir),
        n_journeys=n_journeys,
        chunk_journeys=chunk_journeys,
        seed=seed,
        posterior=True,
    )
    rss_before_kib = _status_kib("VmRSS")  # interpreter, libraries and configs loaded
    start = time.perf_counter()
    summary = generate(gen_cfg, composed["generator"])
    seconds = time.perf_counter() - start
    parquet_bytes = sum(f.stat().st_size for f in (out_dir / "sessions").glob("*.parquet"))
    return {
        "journeys": summary["journeys"],
        "sessions": summary["sessions"],
        "parts": summary["parts"],
        "seconds": seconds,
        "rss_before_kib": rss_before_kib,
        "peak_rss_kib": _status_kib("VmHWM"),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "parquet_bytes": parquet_bytes,
    }


def measure(sessions: int, chunk_journeys: int, seed: int, tmp: Path) -> dict:
    """Run one size in a fresh process; its output folder is removed afterwards."""
    composed = compose_config("generate")
    n_journeys = journeys_for(sessions, composed["generator"])
    out_dir = tmp / f"sessions_{sessions}"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-journeys",
        str(n_journeys),
        "--chunk-journeys",
        str(chunk_journeys),
        "--seed",
        str(seed),
        "--child-out",
        str(out_dir),
    ]
    print(f"generating {n_journeys:,} journeys (~{sessions:,} sessions) ...", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"the child generating {n_journeys} journeys failed ({proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(target_sessions=sessions, process_s=wall)
    print(
        f"  {result['sessions']:,} sessions in {result['seconds']:.1f} s, "
        f"peak RSS {result['peak_rss_kib'] / 1024:.0f} MiB",
        flush=True,
    )
    return result


def combine(runs: list[dict]) -> dict:
    """Repeats of one size: the fastest time (least disturbed by other load), the highest peak."""
    out = dict(min(runs, key=lambda r: r["seconds"]))
    out["times"] = [r["seconds"] for r in runs]
    for key in ("peak_rss_kib", "ru_maxrss_kib", "rss_before_kib"):
        out[key] = max(r[key] for r in runs)
    out["peaks_kib"] = [r["peak_rss_kib"] for r in runs]
    return out


def size_label(sessions: int) -> str:
    if sessions >= 1_000_000 and sessions % 100_000 == 0:
        return f"{sessions / 1_000_000:g}M"
    if sessions >= 1_000 and sessions % 1_000 == 0:
        return f"{sessions // 1_000}k"
    return str(sessions)


def render(
    small: dict, large: dict, args: argparse.Namespace, command: str, meta: list[str]
) -> str:
    rss_ratio = large["peak_rss_kib"] / small["peak_rss_kib"]
    status = "PASS" if rss_ratio <= TARGET_RSS_RATIO else "FAIL"
    rate = {name: r["sessions"] / r["seconds"] for name, r in (("small", small), ("large", large))}
    sizes = f"{size_label(args.small)} vs {size_label(args.large)} sessions"
    lines = [
        f"## Generation memory: {sizes}",
        "",
        f"`{command}`",
        "",
        *meta,
        f"- each size run {args.repeats}x, alternating, each run in a fresh process; "
        "peak RSS is the highest of the runs, time the fastest (the least disturbed by other "
        "load on the machine)",
        f"- {args.chunk_journeys:,} journeys per chunk, seed "
        f"{args.seed}, Bayes posterior on, parquet parts written to a temporary folder "
        "(deleted afterwards)",
    ]
    if args.large != 10_000_000 or args.small != 1_000_000:
        lines.append(
            f"- sizes used: {size_label(args.small)} and {size_label(args.large)} sessions "
            "(the reference sizes are 1M and 10M)"
        )
    lines += [
        "",
        "| run | journeys | sessions | parts | peak RSS (VmHWM) | RSS before generating "
        "| generate time, fastest | sessions/s | parquet size | peak RSS of each run "
        "| time of each run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, r in (("small", small), ("large", large)):
        lines.append(
            f"| {size_label(r['target_sessions'])} | {r['journeys']:,} | {r['sessions']:,} "
            f"| {r['parts']} | {r['peak_rss_kib'] / 1024:.0f} MiB "
            f"| {r['rss_before_kib'] / 1024:.0f} MiB | {r['seconds']:.1f} s "
            f"| {rate[name]:,.0f} | {r['parquet_bytes'] / 2**20:.0f} MiB "
            f"| {', '.join(f'{k / 1024:.0f}' for k in r['peaks_kib'])} MiB "
            f"| {', '.join(f'{t:.1f}' for t in r['times'])} s |"
        )
    growth = (large["peak_rss_kib"] - small["peak_rss_kib"]) / 1024
    lines += [
        "",
        f"**Peak RSS {size_label(args.large)} / {size_label(args.small)}: {rss_ratio:.2f}x** "
        f"(target <= {TARGET_RSS_RATIO}x): **{status}** ({growth:+.0f} MiB for "
        f"{large['sessions'] / small['sessions']:.1f}x the sessions)",
        "",
        f"Throughput {size_label(args.large)} / {size_label(args.small)}: "
        f"{rate['large'] / rate['small']:.2f}x ({rate['small']:,.0f} vs {rate['large']:,.0f} "
        "sessions/s; 1.0 = time linear in size; timings on this shared machine are noisy).",
        "",
        "Peak RSS is each child's high-water mark (VmHWM) read when generation has finished; "
        f"getrusage's ru_maxrss agrees ({small['ru_maxrss_kib'] / 1024:.0f} and "
        f"{large['ru_maxrss_kib'] / 1024:.0f} MiB).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak RSS and throughput of generating a small and a large number of "
        "sessions, each in a fresh process.",
    )
    parser.add_argument(
        "--small", type=int, default=1_000_000, help="sessions of the small run (default 1M)"
    )
    parser.add_argument(
        "--large", type=int, default=10_000_000, help="sessions of the large run (default 10M)"
    )
    parser.add_argument(
        "--chunk-journeys", type=int, default=50_000, help="journeys per chunk (default 50000)"
    )
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=15.0,
        help="refuse the large runs if the first small run projects one above this (default 15)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each size, alternating; reports the fastest time and the highest peak "
        "RSS (default 3)",
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=None,
        help="where the temporary folder goes (default: $TMPDIR)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_RESULTS, help="results file (default bench/RESULTS.md)"
    )
    parser.add_argument(
        "--section",
        default="bench_generate",
        help="the marker name of the section rewritten in --out (default bench_generate)",
    )
    # the child process's mode
    parser.add_argument("--child-journeys", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_journeys is None and not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_journeys is not None:
        result = child(args.child_journeys, args.chunk_journeys, args.seed, args.child_out)
        print(json.dumps(result), flush=True)
        return 0

    meta = run_metadata()  # before the run: the code version it ran with
    runs: dict[str, list[dict]] = {"small": [], "large": []}
    with tempfile.TemporaryDirectory(prefix="bench_generate_", dir=args.tmp_dir) as tmp:
        for i in range(args.repeats):
            # the sizes alternate so that load from elsewhere on the machine hits both alike
            runs["small"].append(measure(args.small, args.chunk_journeys, args.seed, Path(tmp)))
            if i == 0:
                first = runs["small"][0]["seconds"]
                projected_min = first * args.large / args.small / 60
                print(f"each large run should take about {projected_min:.1f} min", flush=True)
                if projected_min > args.max_minutes:
                    fits = int(args.large * args.max_minutes / projected_min)
                    print(
                        f"that is above --max-minutes {args.max_minutes:g}: rerun with a smaller "
                        f"--large (about {fits} fits) or a larger --max-minutes",
                        file=sys.stderr,
                    )
                    return 2
            runs["large"].append(measure(args.large, args.chunk_journeys, args.seed, Path(tmp)))
    small, large = combine(runs["small"]), combine(runs["large"])

    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    report = render(small, large, args, command, meta)
    print("\n" + report, flush=True)
    path = write_section(args.out, args.section, report)
    print(f"wrote section {args.section!r} of {path}", flush=True)
    return 0 if large["peak_rss_kib"] / small["peak_rss_kib"] <= TARGET_RSS_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
