"""How every `micromoment` command starts and ends.

Each command's entry point is `@command("<config name>", tracking=...)` over a function of the
composed config. The runner, in this order:
1. sets the log level (`runtime.log_level`);
2. refuses values left unset (`???`) and credentials written into a URI, and scrubs any URI
   password from Hydra's own record of the run (`.hydra/*.yaml`);
3. for commands that talk to MLflow, bounds MLflow's HTTP retries (`tracking.http_*`) and checks
   the tracking server answers before any expensive work;
4. runs the command, and turns what went wrong into one line and an exit code: a user error
   (bad config, missing or empty file, bad columns, an unknown alias) is one line on stderr; only
   a bug prints a traceback.

Exit codes, the same for every command (the README's table):
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import requests
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pipelines.config import hydra_main
from pipelines.config.schema import validate_generator
from pipelines.core.contract import ContractError
from pipelines.core.cv import EvalConfigError
from pipelines.core.scorer import check_explain
from pipelines.core.secrets import CREDENTIALS_HINT, has_secret, redact
from pipelines.core.synthetic import GeneratorConfigError
from pipelines.io.outputs import LockHeld, OutputRefused
from pipelines.io.readers import EmptyInput, PartMismatch
from pipelines.tracking.runs import resolve_tracking_uri

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BUG = 1  # anything unexpected: the traceback is in the log
EXIT_USAGE = 2  # a config value, an unset value, a URI with credentials, an output path refused
EXIT_BAD_DATA = 3  # a missing, empty or unreadable input, missing or mistyped columns, too few rows
EXIT_TRACKING = 4  # the tracking server or registry cannot be reached, at any point
EXIT_MODEL = 5  # a model, alias or version that does not exist or cannot be loaded or judged
EXIT_LOCKED = 6  # another job holds the lock

__doc__ += "\n".join(
    f"- {value}: {name.removeprefix('EXIT_').lower()}"
    for name, value in dict(globals()).items()
    if name.startswith("EXIT_")
)


class UserError(Exception):
    """Something the user can fix; reported as one line with `code` as the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def reasons_asked(value, key: str) -> int:
    """The number of reason codes a config value asks for (`core.scorer.check_explain`); a bad
    one is a usage error naming its key."""
    try:
        return check_explain(value)
    except ValueError as err:
        raise UserError(f"{key}: {err}") from None


def share_asked(value, key: str) -> float:
    """A share setting from 0 to 1 (`score.max_rejected_share`, `feed.max_rejected_share`); any
    other value is a usage error naming its key."""
    share = float(value)
    if not 0 <= share <= 1:
        raise UserError(f"{key} must be from 0 to 1, got {share:g}")
    return share


def refuse_secrets_in_args(args: list[str], environ: Mapping[str, str] = os.environ) -> None:
    """Refuse a password inside a URI on the command line or in MLFLOW_TRACKING_URI.

    Checked before Hydra runs, because Hydra records the command line in its output folder.
    """
    for arg in args:
        if has_secret(arg):
            key = arg.split("=", 1)[0] if "=" in arg else "an argument"
            raise UserError(
                f"{key} holds a password inside a URI ({redact(arg)}); {CREDENTIALS_HINT}"
            )
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if has_secret(uri):
        raise UserError(f"MLFLOW_TRACKING_URI holds a password ({redact(uri)}); {CREDENTIALS_HINT}")


def _strings(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{prefix}{key}.")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _strings(value, f"{prefix}{i}.")
    elif isinstance(node, str):
        yield prefix.rstrip("."), node


def check_config(cfg: DictConfig) -> None:
    """Refuse values left `???` and credentials inside any URI of the composed config."""
    missing = [k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra.")]
    if missing:
        first = missing[0]
        more = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise UserError(f"{first} is not set{more}: give it on the command line, e.g. {first}=...")
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    for key, value in _strings(plain):
        if has_secret(value):
            raise UserError(
                f"{key} holds a password inside a URI ({redact(value)}); {CREDENTIALS_HINT}"
            )


def scrub_hydra_output() -> None:
    """Redact URI passwords from the run's `.hydra/*.yaml` (Hydra writes them before any check)."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return
    if not hc.output_subdir:
        return
    folder = Path(hc.runtime.output_dir) / hc.output_subdir
    for path in folder.glob("*.yaml"):
        text = path.read_text()
        if has_secret(text):
            path.write_text(redact(text))


def http_settings(tracking: Mapping) -> None:
    """Bound MLflow's HTTP retries, so an outage ends a job in seconds rather than minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(tracking["http_max_retries"]))
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(tracking["http_timeout_s"]))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(int(tracking["http_backoff_s"]))


def check_tracking(uri: str) -> None:
    """Fail fast, with the URI (password hidden), when the tracking server does not answer."""

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update(quick)
    try:
        MlflowClient(uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # any transport or server error means "cannot reach it"
        raise UserError(
            f"tracking server {redact(uri)} cannot be reached: {type(err).__name__}: "
            f"{_first_line(err)}",
            EXIT_TRACKING,
        ) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = redact(str(err)).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:limit]


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


_OUTAGE_TEXT = re.compile(
    r"Max retries exceeded|Connection refused|Failed to establish a new connection|"
    r"API request to .* failed|RemoteDisconnected|Connection aborted|Read timed out",
    re.IGNORECASE,
)


def is_tracking_outage(err: BaseException) -> bool:
    """True when `err` (or what caused it) is the tracking server or artifact store not answering."""

    for e in _chain(err):
        if isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        if type(e).__module__.startswith(("urllib3", "http.client")) and isinstance(e, Exception):
            return True
        if type(e).__name__ == "MlflowException" and _OUTAGE_TEXT.search(str(e)):
            return True
    return False


def exit_code_for(err: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an exception raised by a command."""

    if isinstance(err, UserError):
        return err.code, redact(str(err))
    if isinstance(err, OutputRefused):
        return EXIT_USAGE, _first_line(err)
    if isinstance(err, LockHeld):
        return EXIT_LOCKED, _first_line(err)
    if isinstance(err, GeneratorConfigError | EvalConfigError):
        return EXIT_USAGE, _first_line(err)
    if is_tracking_outage(err):
        return EXIT_TRACKING, f"the tracking server stopped answering: {_first_line(err)}"
    if isinstance(err, MissingMandatoryValue):
        return EXIT_USAGE, f"a required value is not set: {_first_line(err)}"
    if isinstance(
        err,
        ContractError
        | EmptyInput
        | PartMismatch
        | FileNotFoundError
        | IsADirectoryError
        | NotADirectoryError,
    ):
        return EXIT_BAD_DATA, _first_line(err)
    if isinstance(err, pd.errors.EmptyDataError):
        return EXIT_BAD_DATA, f"the input is empty: {_first_line(err)}"
    if isinstance(err, pa.ArrowInvalid | pa.ArrowTypeError):
        return EXIT_BAD_DATA, f"the input cannot be read: {_first_line(err)}"
    if isinstance(err, MlflowException) and err.error_code in (
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_PARAMETER_VALUE",
    ):
        return EXIT_MODEL, _first_line(err)
    return EXIT_BUG, f"{type(err).__name__}: {_first_line(err)}"


def fail(command: str, code: int, message: str) -> None:
    """Report a failure as one line on stderr, and in the run's log file."""
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, f"exit {code}: {message}", None, None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"micromoment {command}: error: {message}", file=sys.stderr, flush=True)


def start(cfg: DictConfig, tracking: bool) -> None:
    """Everything a command does before its own work (see the module docstring)."""
    scrub_hydra_output()
    level = str(OmegaConf.select(cfg, "runtime.log_level", default="INFO")).upper()
    logging.getLogger("pipelines").setLevel(level)
    check_config(cfg)
    if "generator" in cfg:
        validate_generator(cfg.generator)  # a world that cannot be drawn, before any work
    refuse_secrets_in_args(
        []
    )  # MLFLOW_TRACKING_URI (the CLI checked the command line before Hydra)
    if "tracking" in cfg:
        http_settings(cfg.tracking)  # also for commands that check the server themselves
    if tracking and "tracking" in cfg:
        check_tracking(resolve_tracking_uri(cfg.tracking.uri))


# set once a command's own code runs: an exit before it is Hydra refusing the config
STARTED = {"value": False}


def in_sweep() -> bool:
    """True inside a job of a Hydra sweep (`-m`)."""
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def run(name: str, cfg: DictConfig, body: Callable[[DictConfig], Any], tracking: bool) -> Any:
    """Start, run `body(cfg)`, and end with an exit code: 0 returns `body`'s result.

    In a sweep a failed job is reported in one line and its error passed on to Hydra, which
    records the job as failed and goes on with the next one.
    """
    STARTED["value"] = True
    try:
        start(cfg, tracking)
        return body(cfg)
    except KeyboardInterrupt:
        fail(name, 130, "interrupted")
        sys.exit(130)
    except Exception as err:
        code, message = exit_code_for(err)
        if code == EXIT_BUG:
            log.exception("micromoment %s failed with a bug", name)
        fail(name, code, message)
        if in_sweep():
            raise
        sys.exit(code)


def command(config_name: str, tracking: bool = True, name: str | None = None):
    """The Hydra entry point of a command: `@command("score")` over `def main(cfg): ...`."""

    def decorate(body: Callable[[DictConfig], Any]):
        @functools.wraps(body)
        def task(cfg: DictConfig) -> Any:
            return run(name or config_name, cfg, body, tracking)

        return hydra_main(config_name)(task)

    return decorate
