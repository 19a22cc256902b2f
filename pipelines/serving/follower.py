"""The served model, and following a registry alias.

`Follower` loads the model a URI names in a background thread, so the server answers `/health`
at once and `/ready` once a model is loaded. For `models:/name@alias` it then asks the registry
every `interval_s` which version the alias points at; when it moved, the new version is loaded
and warmed (one prediction) in that thread, and swapped in with one assignment: a batch reads
`current` once, so it runs whole on the old model or whole on the new one, and no request fails
during the switch. A version that fails to load is logged and the old one kept serving.
`loading` is True while a new version loads beside the one serving (and while the old one is
let go): the batcher does not shed load for the slowdown this causes.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from pipelines.core.scorer import IntentModel, column_records
from pipelines.serving.sessions import Reading
from pipelines.tracking.registry import alias_of, alias_version, load_scorer

log = logging.getLogger(__name__)

# seconds between attempts while no model could be loaded yet (the interval when it is shorter)
RETRY_S = 5.0


@dataclass(eq=False)
class Served:
    """A loaded model with its registered name and version, and the alias it was reached by."""

    model: IntentModel
    name: str | None
    version: str | None
    uri: str
    alias: str | None = None
    predictor: str = "lightgbm"
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def predict(self, frame: pd.DataFrame, explain: int = 0) -> pd.DataFrame:
        """What the registered pyfunc returns for `frame` (`IntentPyfunc.predict`)."""
        return self.model.predict(frame, nullable=True, explain=explain, **self._labels)

    def records(self, frame: pd.DataFrame, explain: int = 0) -> list[dict]:
        """The rows of `predict(frame)` as JSON-ready records (None when missing), made
        without building its frame: what an answer is written from."""
        return column_records(self.model.predict_columns(frame, explain=explain, **self._labels))

    @property
    def _labels(self) -> dict:
        return {
            "source": "request",
            "extra": {"model_name": self.name, "model_version": self.version},
        }

    @functools.cached_property
    def reading(self) -> Reading:
        """What the model reads, as requests are sorted into batches by it."""
        return Reading.of(self.model.spec)

    def warm(self) -> None:
        """One prediction of a session with every mapped column empty, and `reading` worked out,
        so that the first request pays for no lazy set-up."""
        self.reading  # noqa: B018
        spec = self.model.spec
        cols = [c for c in spec.role_columns().values() if c] + list(spec.page_counts.values())
        row = dict.fromkeys(cols + list(spec.extra_numeric) + list(spec.extra_categorical))
        row[spec.columns.get("session_id") or "session_id"] = "warm-up"
        self.records(pd.DataFrame([row]))

    def describe(self) -> dict:
        return {
            "model_name": self.name,
            "model_version": self.version,
            "alias": self.alias,
            "model_uri": self.uri,
            "predictor": self.predictor,
            "loaded_at": self.loaded_at,
        }


def registry_loader(threads: int, compiled: bool) -> Callable[[str], Served]:
    """Load a model URI through `load_scorer`: no pickles; compiled trees when `compiled` and
    they can be built (a server answers many calls, so it compiles whatever the size)."""

    def load(uri: str) -> Served:
        model, info = load_scorer(uri, threads, compiled=compiled, min_rows=0)
        version = info["model_version"]
        return Served(
            model,
            info["model_name"],
            None if version is None else str(version),
            uri,
            predictor=info["predictor"],
        )

    return load


class Follower:
    """Keeps `current` the model `uri` names (see the module docstring). `latest` (default: the
    registry's version of the alias) is asked only for an alias URI and `interval_s` > 0 polls."""

    def __init__(
        self,
        uri: str,
        load: Callable[[str], Served],
        interval_s: float,
        latest: Callable[[], str | None] | None = None,
    ):
        self.uri = uri
        self.load = load
        self.interval_s = float(interval_s)
        self.alias = alias_of(uri)
        if self.alias and latest is None:
            name, alias = self.alias
            latest = lambda: alias_version(name, alias)  # noqa: E731
        self.latest = latest if self.alias else None
        self.current: Served | None = None
        self.error: str | None = None
        self.swaps = 0
        self.loading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="micromoment-follower", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            following = self.latest is not None and self.interval_s > 0
            if self.current is not None and not following:
                return
            # not ready yet: try again soon, whatever the interval
            wait = (
                self.interval_s
                if self.current is not None
                else min(self.interval_s or RETRY_S, RETRY_S)
            )
            if self._stop.wait(wait):
                return

    def check(self) -> bool:
        """Load the version the URI names now when it is not the one served; True on a swap."""
        try:
            return self._check()
        finally:
            self.loading = False

    def _check(self) -> bool:
        try:
            version = self.latest() if self.latest else None
            if self.current is not None and (
                self.latest is None or version == self.current.version
            ):
                self.error = None  # the registry answers again: an old error is over
                return False
            if self.latest is not None and version is None:
                raise LookupError(f"{self.uri}: the alias is not set")
            self.loading = self.current is not None  # beside the model serving
            served = self.load(self.target(version))
            if self.alias:
                served.alias = self.alias[1]
            served.warm()
        except Exception as err:  # anything: the old model keeps serving
            self.error = f"{type(err).__name__}: {err}"
            log.error(
                "could not load %s: %s; %s",
                self.uri,
                self.error,
                f"still serving version {self.current.version}" if self.current else "not ready",
            )
            return False
        previous, self.current, self.error = self.current, served, None  # the swap
        self.swaps += previous is not None
        log.info(
            "serving %s version %s%s",
            served.name,
            served.version,
            f" (was version {previous.version})" if previous else "",
        )
        del previous  # freed here, still `loading`, unless a batch holds it
        return True

    def target(self, version: str | None) -> str:
        """The URI to load: the alias's version pinned (it may move again while loading)."""
        if self.alias is None or version is None:
            return self.uri
        return f"models:/{self.alias[0]}/{version}"
