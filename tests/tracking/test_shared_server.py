"""The registry life cycle against the kind of server teams run: `mlflow server` on a PostgreSQL
backend store with proxied artifacts, on 127.0.0.1. The real CLI trains, promotes and retrains
while a consumer in another process keeps loading `@champion`: once a champion exists the consumer
never fails, and it only ever serves versions that were promoted."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.config import CONF_DIR
from tests.servers import free_port, mlflow_server

pytestmark = pytest.mark.slow

NAME = "micro_moment_intent"
IS_ROOT = os.geteuid() == 0


def _postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's server programs: Debian's /usr/lib/postgresql/<major>/bin,
    else wherever `initdb` is on the PATH."""

    def major(bin_dir: str) -> int:
        name = Path(bin_dir).parent.name.split(".")[0]
        return int(name) if name.isdigit() else -1

    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        if all(os.access(Path(bin_dir, p), os.X_OK) for p in ("initdb", "pg_ctl")):
            return Path(bin_dir)
    initdb = shutil.which("initdb")
    if initdb and os.access(Path(initdb).resolve().with_name("pg_ctl"), os.X_OK):
        return Path(initdb).resolve().parent
    return None


def _as_cluster_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user."""
    if not IS_ROOT:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-c", shlex.join(cmd)]


def _run(cmd: list[str], cwd: Path, timeout: float) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port with a database `mlflow` owned by a
    role with a password; yields its SQLAlchemy URI (psycopg2 driver) and stops the cluster on the
    way out."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL server programs (initdb, pg_ctl) under /usr/lib/postgresql/*/bin or on "
            "the PATH; scripts/ensure_postgres.sh (run by make setup as root) installs them"
        )
    psycopg2 = pytest.importorskip(
        "psycopg2", reason="psycopg2-binary (the dev extra: make setup) is not installed"
    )
    if IS_ROOT:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    # under /tmp, not tmp_path: pytest keeps its base folder private to us, and as root the
    # cluster runs as `postgres`, which must reach its data folder and socket
    root = Path(tempfile.mkdtemp(prefix="micromoment-pg-"))
    if IS_ROOT:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, port, password = root / "data", free_port(), secrets.token_urlsafe(18)
    started = False
    try:
        _run(
            _as_cluster_owner(
                [
                    str(bin_dir / "initdb"),
                    "--pgdata",
                    str(data),
                    "--username",
                    "postgres",
                    "--auth-local",
                    "trust",
                    "--auth-host",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            cwd=root,
            timeout=120,
        )
        # loopback only, a socket in our folder, and no fsync: the cluster lives for one test
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        start = ["-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60"]
        started = True
        try:
            _run(
                _as_cluster_owner([str(bin_dir / "pg_ctl"), *start, "-o", options, "start"]),
                cwd=root,
                timeout=90,
            )
        except RuntimeError as err:
            log = root / "postgres.log"
            raise RuntimeError(f"{err}\n{log.read_text()[-2000:] if log.exists() else ''}") from err
        admin = psycopg2.connect(host=str(root), port=port, user="postgres", dbname="postgres")
        try:
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute("CREATE ROLE mlflow LOGIN PASSWORD %s", (password,))
                cur.execute("CREATE DATABASE mlflow OWNER mlflow")
        finally:
            admin.close()
        dsn = f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"
        psycopg2.connect(dsn, connect_timeout=10).close()  # the role logs in over TCP
        # the driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3
        yield dsn.replace("postgresql://", "postgresql+psycopg2://")
    finally:
        if started:
            stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30", "stop", "-m"]
            try:
                _run(_as_cluster_owner([*stop, "fast"]), cwd=root, timeout=45)
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    _run(_as_cluster_owner([*stop, "immediate"]), cwd=root, timeout=45)
        shutil.rmtree(root, ignore_errors=True)


# The consumer: a separate process that loads @champion in a loop, as a service would, and writes
# one JSON line per attempt. "missing" is the alias (or the model) not existing yet; anything else
# that goes wrong is an "error".
CONSUMER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, classes = sys.argv[1], json.loads(sys.argv[2])
    log_path, stop_path = Path(sys.argv[3]), Path(sys.argv[4])
    max_loops, max_seconds = int(sys.argv[5]), float(sys.argv[6])
    sessions = pd.DataFrame(
        {
            "session_id": ["s1", "s2", "s3"],
            "journey_id": ["j1", "j1", "j2"],
            "started_at": ["2026-09-03T10:00:00", "2026-09-04T18:30:00", "2026-09-05T12:00:00"],
            "device": ["mobile", "mobile", "desktop"],
            "dwell_time_s": [45.0, 120.0, 600.0],
            "pages_store_locator": [3, 0, 0],
            "pages_cart": [0, 2, 0],
            "pages_how_to": [0, 0, 6],
        }
    )
    client = MlflowClient()
    verified = {}  # version -> it loads by number, scores, and says it is that version

    def score(model):
        out = model.predict(sessions)
        total = out[[f"p_{c}" for c in classes]].sum(axis=1)
        return sorted(set(out["model_version"].astype(str))), bool(((total - 1).abs() < 1e-6).all())

    def attempt(final):
        record = {"start": time.time(), "final": final}
        try:
            try:
                alias_version = str(client.get_model_version_by_alias(name, "champion").version)
            except MlflowException as exc:
                # no model yet: RESOURCE_DOES_NOT_EXIST; a model without the alias yet: the
                # server answers INVALID_PARAMETER_VALUE "... alias champion not found."
                not_yet = exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                    "alias champion not found" in str(exc)
                )
                if not not_yet:
                    raise
                record.update(kind="missing", error=str(exc)[:300])
                return record
            served, sums_to_1 = score(mlflow.pyfunc.load_model(f"models:/{name}@champion"))
            if alias_version not in verified:
                by_number = score(mlflow.pyfunc.load_model(f"models:/{name}/{alias_version}"))
                verified[alias_version] = by_number == ([alias_version], True)
            record.update(
                kind="ok",
                alias_version=alias_version,
                alias_version_loads=verified[alias_version],
                served=served,
                probabilities_sum_to_1=sums_to_1,
            )
        except Exception as exc:
            record.update(kind="error", error=f"{type(exc).__name__}: {exc}"[:2000])
        return record

    deadline = time.monotonic() + max_seconds
    with log_path.open("a") as log:
        for _ in range(max_loops):
            final = stop_path.exists()  # the last attempt starts after every command finished
            record = attempt(final)
            record["end"] = time.time()
            log.write(json.dumps(record) + "\\n")
            log.flush()
            if final or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    """
)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _micromoment(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("micromoment")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipelines.cli"]
    proc = subprocess.run(
        [*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"micromoment {shlex.join(args)} exited {proc.returncode}\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    )
    return proc


def _registered(proc: subprocess.CompletedProcess) -> str:
    found = re.search(rf"registered:\s+{NAME} version (\d+)", proc.stdout)
    assert found, proc.stdout
    return found.group(1)


def _promoted(proc: subprocess.CompletedProcess, version: str) -> bool:
    found = re.search(
        rf"{NAME} version {version}: (promoted to champion|not promoted)", proc.stdout
    )
    assert found, proc.stdout
    return found.group(1) == "promoted to champion"


def _champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_train_promote_and_retrain_on_a_postgres_server_while_a_consumer_loads_the_champion(
    postgres, tmp_path
):
    classes = list(OmegaConf.load(f"{CONF_DIR}/data/synthetic.yaml").label.classes)
    with mlflow_server(tmp_path, backend_store_uri=postgres, startup_s=180) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.pop("PYTHONPATH", None)
        env["MLFLOW_TRACKING_URI"] = url
        client = MlflowClient(url, registry_uri=url)
        work, data = tmp_path / "work", tmp_path / "data"
        consumer_dir = tmp_path / "consumer"
        for folder in (work, consumer_dir / "tmp"):
            folder.mkdir(parents=True)
        script, log, stop = (
            consumer_dir / "consume.py",
            consumer_dir / "log.jsonl",
            tmp_path / "stop",
        )
        script.write_text(CONSUMER)
        data_args = [
            f"data.path={data / 'sessions'}",
            f"data.stores_path={data / 'stores.csv'}",
            "runtime.threads=1",
        ]
        fit_args = [
            "baselines=false",
            "model.num_boost_round=200",
            "model.early_stopping_rounds=20",
        ]
        weak = ["features.history=false", "model.params.num_leaves=2", "model.num_boost_round=3"]

        with open(consumer_dir / "stderr.log", "wb") as consumer_err:
            consumer = subprocess.Popen(
                [sys.executable, str(script), NAME, json.dumps(classes), str(log), str(stop)]
                + ["5000", "900"],  # at most 5000 attempts or 15 minutes, whatever happens here
                cwd=consumer_dir,
                env={
                    **env,
                    "TMPDIR": str(consumer_dir / "tmp"),
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                },
                stdout=subprocess.DEVNULL,
                stderr=consumer_err,
            )
            try:
                # the consumer is running before anything is registered
                deadline = time.monotonic() + 120
                while not _records(log):
                    assert consumer.poll() is None, (consumer_dir / "stderr.log").read_text()
                    assert time.monotonic() < deadline, "the consumer wrote nothing in 120 s"
                    time.sleep(0.5)

                gen = ["generate", "generate.n_journeys=600", f"generate.out_dir={data}"]
                _micromoment([*gen, "runtime.threads=1"], work, env)

                # a weak first model, promoted: the first model becomes champion
                v1 = _registered(_micromoment(["train", *data_args, *fit_args, *weak], work, env))
                assert _promoted(_micromoment(["promote", *data_args], work, env), v1)
                first_champion_at = time.time()
                assert _champion(client) == v1
                champions = [v1]

                # a strong model: the gate moves the alias while the consumer keeps loading it
                v2 = _registered(_micromoment(["train", *data_args, *fit_args], work, env))
                assert _champion(client) == v1  # registering alone does not serve a version
                assert _promoted(_micromoment(["promote", *data_args], work, env), v2)
                assert _champion(client) == v2
                champions.append(v2)

                # the scheduled job: a fresh challenger on the window, promoted or kept
                retrain = _micromoment(
                    [
                        "retrain",
                        *data_args,
                        *fit_args,
                        "retrain.min_rows=100",
                        "retrain.window_days=365",
                        f"retrain.lock_path={work / 'retrain.lock'}",
                        f"retrain.summary_path={work / 'summary.json'}",
                    ],
                    work,
                    env,
                )
                summary = json.loads((work / "summary.json").read_text())
                assert summary["exit_code"] == 0 and summary["champion_before"] == v2
                assert summary["decision"] in ("promoted", "kept"), summary
                assert f"retrain: {summary['decision']}" in retrain.stdout
                v3 = summary["challenger"]
                if summary["decision"] == "promoted":
                    assert summary["champion_after"] == v3
                else:
                    assert summary["champion_after"] == v2
                assert _champion(client) == summary["champion_after"]
                assert str(client.get_model_version_by_alias(NAME, "challenger").version) == v3
                champions.append(summary["champion_after"])
            finally:
                stop.touch()
                try:
                    consumer.wait(timeout=180)
                except subprocess.TimeoutExpired:
                    consumer.kill()
                    consumer.wait(timeout=30)

        registered = {v1, v2, v3}
        assert len(registered) == 3  # the job registered a version of its own
        assert {str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")} == (
            registered
        )

    records = _records(log)
    assert consumer.returncode == 0, (consumer_dir / "stderr.log").read_text()[-3000:]
    errors = [r for r in records if r["kind"] == "error"]
    assert not errors, errors[:5]
    missing = [r for r in records if r["kind"] == "missing"]
    assert missing, "the consumer started only after the first champion existed"
    assert all(r["start"] < first_champion_at for r in missing), [
        r for r in missing if r["start"] >= first_champion_at
    ][:5]
    loads = [r for r in records if r["kind"] == "ok"]
    assert loads and all(r["start"] > missing[-1]["start"] for r in loads)
    # the consumer served only champions, each of them, and nothing but well-formed probabilities
    served = {v for r in loads for v in r["served"]}
    assert served == set(champions) and served <= registered
    assert all(r["alias_version"] in registered and r["alias_version_loads"] for r in loads)
    assert all(r["probabilities_sum_to_1"] for r in loads)
    final = records[-1]
    assert final["final"] and final["kind"] == "ok", final
    assert final["served"] == [champions[-1]] and final["alias_version"] == champions[-1]
