"""Structured config schemas: a typo or a wrong type in a config fails when Hydra composes it.

Each group's YAML files extend their schema (`defaults: [schema, _self_]`), so
`micromoment train data.columns.devise=device` or `runtime.threads=two` is refused up front with
the key and the expected type, instead of deep inside a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipelines.core import outcomes
from pipelines.core.synthetic import GeneratorParams


def choices(name: str, *values: str) -> type[StrEnum]:
    """A string enum whose members are `values`: a config value outside them fails at compose
    time, naming the allowed ones."""
    return StrEnum(name, [(v, v) for v in values], module=__name__)


# split.by: `journey` sends whole journeys to train, val or test at random (seeded); `time`
# makes the journeys that started last the test split
SplitKind = choices("SplitKind", "journey", "time")
GateMetric = choices("GateMetric", "macro_f1", "accuracy", "logloss", "ece")
EngineName = choices("EngineName", "local", "dask")
LogLevel = choices("LogLevel", "DEBUG", "INFO", "WARNING", "ERROR")
Objective = choices("Objective", "conversions", "value")
IntentSource = choices("IntentSource", "auto", "label", "predicted")
Direction = choices("Direction", "minimize", "maximize")
ParamType = choices("ParamType", "float", "int", "categorical")
CVKind = choices("CVKind", "journey", "time")
ObjectiveDirection = choices("ObjectiveDirection", "auto", "minimize", "maximize")
CalibrationKind = choices("CalibrationKind", "temperature", "vector", "isotonic")


@dataclass
class ColumnsSchema:
    """Role -> the user's column name; None (null) when the table does not have it."""

    session_id: str | None = None
    journey_id: str | None = None
    started_at: str | None = None
    utc_offset_min: str | None = None
    device: str | None = None
    channel: str | None = None
    latitude: str | None = None
    longitude: str | None = None
    region: str | None = None
    dwell_time_s: str | None = None
    page_views: str | None = None
    returning_visitor: str | None = None
    touchpoint: str | None = None
    touchpoint_propensity: str | None = None
    converted: str | None = None


@dataclass
class LabelSchema:
    """The label column, the class set in order, and how raw label values map onto it."""

    column: str | None = None
    classes: list[str] = field(default_factory=lambda: ["know", "go", "do", "buy"])
    mapping: dict[str, str] = field(default_factory=dict)


@dataclass
class DataSchema:
    """A dataset (`conf/data/`): its path, the store table, its columns mapped onto roles."""

    name: str = MISSING
    path: str = MISSING
    stores_path: str | None = None
    columns: ColumnsSchema = field(default_factory=ColumnsSchema)
    page_counts: dict[str, str] = field(default_factory=dict)
    label: LabelSchema = field(default_factory=LabelSchema)
    extra_numeric: list[str] = field(default_factory=list)
    extra_categorical: list[str] = field(default_factory=list)
    reference_posterior_prefix: str | None = None


@dataclass
class FeaturesSchema:
    """Journey history on or off, what counts as near a store, how rare a category may be."""

    history: bool = True
    near_store_km: float = 1.0
    min_category_count: int = 5


@dataclass
class ModelSchema:
    """LightGBM: the round cap, the early-stopping patience, and its own parameters."""

    num_boost_round: int = 2000
    early_stopping_rounds: int = 50
    log_every: int = 100
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SplitSchema:
    """How sessions are split into train, validation and test (whole journeys always)."""

    by: SplitKind = SplitKind.journey
    val_size: float = 0.15
    test_size: float = 0.15


@dataclass
class CVSchema:
    """Cross-validation (`eval.cv`): folds of whole journeys, repeated; 0 folds is off."""

    folds: int = 0
    repeats: int = 1
    by: CVKind = CVKind.journey


@dataclass
class CalibrationSchema:
    """Post-hoc calibration (`eval.calibration`): the kinds to try on the validation split (none:
    off); the best is kept only when it lowers the out-of-fold validation log-loss."""

    methods: list[CalibrationKind] = field(default_factory=list)
    folds: int = 5
    min_gain: float = 0.001


@dataclass
class EvalSchema:
    """How a trained model is judged beyond its test split: cross-validation, calibration, and
    the metric a sweep or search minimises."""

    cv: CVSchema = field(default_factory=CVSchema)
    calibration: CalibrationSchema = field(default_factory=CalibrationSchema)
    objective: str = "val/logloss"
    direction: ObjectiveDirection = ObjectiveDirection.auto


@dataclass
class TrackingSchema:
    """The MLflow store (`tracking.uri`), the experiment, how long to wait for a server."""

    uri: str | None = None
    artifact_location: str | None = None
    experiment: str = "micromoment"
    run_name: str | None = None
    http_max_retries: int = 2
    http_timeout_s: int = 30
    http_backoff_s: int = 1


@dataclass
class RegistrySchema:
    """What happens to a trained model: registered under which name, alias and gate."""

    register: bool = True
    model_name: str = "micro_moment_intent"
    alias: str | None = "challenger"
    gate: bool = False


@dataclass
class GateSchema:
    """The champion/challenger gate (`conf/gate/`): the metric, the margin, the rows it needs."""

    min_improvement: float = 0.0
    max_class_f1_drop: float = 0.02
    min_holdout_rows: int = 200
    metric: GateMetric = GateMetric.macro_f1


@dataclass
class RuntimeSchema:
    """Threads (LightGBM and friends), the seed of every random choice, and the log level."""

    threads: int = 2
    log_level: LogLevel = LogLevel.INFO
    seed: int = 42
    compiled_trees: bool = True  # batch scoring predicts with compiled trees when it can
    compile_min_rows: int = 1_000_000  # smaller inputs: LightGBM, unless compiled already


@dataclass
class GenerateSchema:
    """How much synthetic data to write, where, and from which seed."""

    out_dir: str = "data/synthetic"
    n_journeys: int = 20000
    chunk_journeys: int = 50000
    seed: int = 7
    posterior: bool = True


@dataclass
class EngineSchema:
    """Where the work runs: this process, or a Dask cluster and how it is sized."""

    name: EngineName = EngineName.local
    scheduler_address: str | None = None
    connect_timeout_s: float = 10.0
    n_workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    partitions: int | None = None
    num_boost_round: int | None = None
    sample_rows: int = 200000
    rounds_factor: float = 1.0


@dataclass
class TouchpointSpecSchema:
    """One touchpoint of the catalogue (see `pipelines.core.touchpoints.Touchpoint`)."""

    label: str | None = None
    channel: str = ""
    cost: float = 0.0
    capacity: float | None = None
    value: float | None = None
    devices: list[str] | None = None
    requires_location: bool = False
    max_store_km: float | None = None
    requires_app: bool = False
    quiet_hours: list[int] | None = None
    frequency_cap: int | None = None
    cap_days: float = 7.0


@dataclass
class EstimationSchema:
    """Conversion by intent x touchpoint: which intents, the data a cell needs, the prior."""

    intent_source: IntentSource = IntentSource.predicted
    min_effective_sessions: float = 50.0
    prior_strength: float = 20.0
    level: float = 0.95


@dataclass
class AllocationSchema:
    """The budgeted allocation's solver: its time limit, optimality gap, exact-solve size."""

    time_limit_s: float = 120.0
    mip_rel_gap: float = 1e-6
    exact_max_pairs: int = 2000


@dataclass
class TouchpointsSchema:
    """The touchpoint catalogue, the budget, and how the feed chooses and holds out."""

    objective: Objective = Objective.conversions
    value_per_conversion: float = 1.0
    budget: float | None = None
    app_channels: list[str] = field(default_factory=list)
    holdout_share: float = 0.1
    holdout_salt: str = "micromoment"
    suppress_after_conversion_hours: float | None = 24.0
    estimation: EstimationSchema = field(default_factory=EstimationSchema)
    allocation: AllocationSchema = field(default_factory=AllocationSchema)
    catalogue: dict[str, TouchpointSpecSchema] = field(default_factory=dict)


@dataclass
class SearchParamSchema:
    """One searched key of `micromoment tune` (see conf/search/default.yaml)."""

    name: str = MISSING
    type: ParamType = ParamType.float
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None


@dataclass
class SearchSchema:
    """A hyperparameter search space (`conf/search/`) and the metric it optimises."""

    metric: str = "val/logloss"
    direction: Direction = Direction.minimize
    pruning: bool = True
    params: list[SearchParamSchema] = field(default_factory=list)


@dataclass
class CitySchema:
    """A synthetic city: where it is, its time zone, its stores and its share of journeys."""

    name: str = MISSING
    lat: float = MISSING
    lon: float = MISSING
    utc_offset_min: int = 0
    stores: list[list[float]] = field(default_factory=list)


@dataclass
class SegmentSchema:
    """A hidden customer segment: its share of journeys and how it tilts the shared parameters
    (a tilt multiplies the named entries of each probability row, then renormalises it)."""

    name: str = MISSING
    share: float = MISSING
    intent_tilt: dict[str, float] = field(default_factory=dict)  # first intent and every move
    device_tilt: dict[str, float] = field(default_factory=dict)
    channel_tilt: dict[str, float] = field(default_factory=dict)
    page_tilt: dict[str, float] = field(default_factory=dict)
    gap_scale: float = 1.0  # times the mean day gap between sessions
    near_store_scale: float = 1.0  # times the chance a located session is at a store
    returning_odds: float = 1.0  # times the odds a first visit is a returning customer
    dwell_shift: list[float] | None = None  # log-seconds added to the dwell, per intent
    pages_scale: list[float] | None = None  # times the mean extra page views, per intent


@dataclass
class GeneratorSchema:
    """Every parameter of the synthetic journeys (see conf/generator/default.yaml).

    Types are checked when Hydra composes; values (rows summing to 1, lengths, known names) by
    `validate_generator`, which raises `GeneratorConfigError` naming the key.
    """

    intents: list[str] = MISSING
    initial: list[float] = MISSING
    transition: list[list[float]] = MISSING
    end_prob: list[float] = MISSING
    max_sessions: int = MISSING
    start_date: str = MISSING
    days: int = MISSING
    cut_at_end: bool = True
    devices: list[str] = MISSING
    device_probs: list[list[float]] = MISSING
    channels: list[str] = MISSING
    channel_probs: list[list[float]] = MISSING
    hour_peak: list[int] = MISSING
    hour_concentration: list[float] = MISSING
    gap_mean_days: list[float] = MISSING
    location_share: dict[str, float] = MISSING
    near_store_mobile: list[float] = MISSING
    near_store_other: list[float] = MISSING
    near_store_mean_km: float = MISSING
    city_radius_km: float = MISSING
    dwell_log_mean: list[float] = MISSING
    dwell_log_sd: list[float] = MISSING
    extra_pages_mean: list[float] = MISSING
    page_types: list[str] = MISSING
    page_type_probs: list[list[float]] = MISSING
    returning_first: list[float] = MISSING
    cities: list[CitySchema] = MISSING
    city_probs: list[float] = MISSING
    touchpoints: list[str] = MISSING
    logging_policy: dict[str, list[float]] = MISSING
    conversion: list[list[float]] = MISSING
    # customer segments and context interactions (docs/synthetic.md); empty = none
    segments: list[SegmentSchema] = field(default_factory=list)
    store_hours: list[int] = field(default_factory=lambda: [0, 24])
    near_store_closed: list[float] | None = None
    returning_channel_odds: dict[str, dict[str, float]] = field(default_factory=dict)
    dwell_device_shift: dict[str, list[float]] = field(default_factory=dict)
    dwell_page_slope: list[float] | None = None
    dwell_page_shift: dict[str, list[float]] = field(default_factory=dict)
    # how journeys answer a feed's contacts (core/response.py); empty: the world cannot answer
    response: dict[str, Any] = field(default_factory=dict)


def validate_generator(cfg: Any) -> None:
    """Refuse generator parameters that cannot describe a world (a row not summing to 1, a
    probability outside [0, 1], lists of the wrong length, unknown names) before any work:
    raises `GeneratorConfigError` naming the `generator.` key."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    GeneratorParams.from_config(cfg)


# the blocks of the primary configs (`score:` in conf/score.yaml, ...): each primary config puts
# its block's schema first (`blocks/<name>@<name>`), so a typo or a wrong type fails on compose


@dataclass
class ScoreBlock:
    """`micromoment score`: the model, the input and output, the chunk size, the reasons."""

    model_uri: str = "models:/micro_moment_intent@champion"
    input: str = MISSING
    output: str = "scores/latest"
    chunk_rows: int = 250000
    explain: int = 0  # the top-k reasons of each prediction (0: none; costs more than scoring)
    max_rejected_share: float = 0.5  # a run rejecting more of its rows fails, writing nothing


@dataclass
class FeedBlock:
    """The touchpoint feed's input, scores and output (`micromoment touchpoints`, `run`)."""

    enabled: bool = True
    input: str = MISSING
    scores: str | None = None
    model_uri: str = "models:/micro_moment_intent@champion"
    output: str = "touchpoints/latest"
    chunk_rows: int = 250000
    explain: int = 0  # the top-k reasons of each journey's latest prediction, when scored here
    max_rejected_share: float = 0.5  # a feed losing more of its sessions fails, writing nothing
    log_to_mlflow: bool = True


OUTCOME_ROLES = outcomes.ROLES


@dataclass
class OutcomesBlock:
    """`micromoment outcomes`: the feed the synthetic world answers, its sessions, the window."""

    enabled: bool = True
    feed: str = "touchpoints/latest"
    sessions: str = MISSING
    output: str = "outcomes/latest"
    window_days: float = 28.0
    seed: int = 0


@dataclass
class MeasureBlock:
    """`micromoment measure`: the feed, its outcome events and how they map onto the contract."""

    enabled: bool = True
    feed: str = "touchpoints/latest"
    outcomes: str = "outcomes/latest/outcomes.parquet"
    output: str = "measure/latest"
    window_days: float = 28.0
    return_days: float = 14.0
    level: float = 0.95
    log_to_mlflow: bool = True
    # role -> column of the outcome table; by default each role's own name
    columns: dict[str, str | None] = field(default_factory=lambda: {r: r for r in OUTCOME_ROLES})


@dataclass
class RetrainBlock:
    """`micromoment retrain`: the window, the data it needs, the lock and the summary."""

    window_days: float = 28.0
    end: str | None = None
    min_rows: int = 1000
    min_psi: float | None = None
    lock_path: str = "retrain.lock"
    summary_path: str = "retrain_summary.json"
    overrides: list[str] = field(default_factory=list)


@dataclass
class TuneBlock:
    """`micromoment tune`: trials, the persistent study, and when to prune."""

    n_trials: int = 20
    study_name: str = "micromoment"
    storage: str = MISSING
    report_every: int = 10
    prune_after_trials: int = 5
    prune_warmup_rounds: int = 30
    timeout_s: float | None = None


@dataclass
class PromoteBlock:
    """`micromoment promote`: the version (alias or number) judged against the champion."""

    challenger: str = "challenger"


@dataclass
class RollbackBlock:
    """`micromoment rollback`: the version to restore (null: the one the champion replaced)."""

    to_version: int | None = None


@dataclass
class ExportBlock:
    """`micromoment export`: the model to export and the folder it goes to."""

    model_uri: str = "models:/micro_moment_intent@champion"
    out_dir: str = "models"


@dataclass
class ServeBlock:
    """`micromoment serve`: the model it follows, where it listens, how it batches and sheds load."""

    model_uri: str = "models:/micro_moment_intent@champion"
    host: str = "127.0.0.1"
    port: int = 8080
    follow_interval_s: float = 30.0  # how often the alias is checked (0: never, keep the first)
    max_batch_rows: int = 256  # rows scored in one predict call at most
    max_wait_ms: float = 2.0  # how long a batch waits for more requests to join it
    max_queue: int = 64  # requests waiting at most; beyond it an immediate 503
    max_delay_ms: float = 25.0  # longer to wait for the work ahead: an immediate 503 (0: never)
    standing_ms: float = 100.0  # queue over max_delay_ms this long: overload, not a burst
    timeout_ms: float = 1000.0  # a request not answered by then gets a 503
    retry_after_s: int = 1  # the Retry-After of a 503
    max_body_bytes: int = 1_048_576  # a larger body gets a 413, refused while it is read
    access_log: bool = False  # uvicorn's line per request
    workers: int = 1  # processes answering on the one port, each with its own model


BLOCKS = {
    "score": ScoreBlock,
    "feed": FeedBlock,
    "outcomes": OutcomesBlock,
    "measure": MeasureBlock,
    "retrain": RetrainBlock,
    "tune": TuneBlock,
    "promote": PromoteBlock,
    "rollback": RollbackBlock,
    "export": ExportBlock,
    "serve": ServeBlock,
}

SCHEMAS = {
    "data": DataSchema,
    "features": FeaturesSchema,
    "model": ModelSchema,
    "split": SplitSchema,
    "eval": EvalSchema,
    "tracking": TrackingSchema,
    "registry": RegistrySchema,
    "runtime": RuntimeSchema,
    "gate": GateSchema,
    "generate": GenerateSchema,
    "touchpoints": TouchpointsSchema,
    "engine": EngineSchema,
    "search": SearchSchema,
    "generator": GeneratorSchema,
}


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore as `<group>/schema` (idempotent)."""
    cs = ConfigStore.instance()
    for group, node in SCHEMAS.items():
        cs.store(group=group, name="schema", node=node)
    for name, node in BLOCKS.items():
        cs.store(group="blocks", name=name, node=node)
