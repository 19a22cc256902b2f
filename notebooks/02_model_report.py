# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Model report
#
# One trained intent model, read from MLflow: its headline metrics against the baselines and the
# Bayes-optimal reference, the plots its training run logged, where it makes mistakes, and where
# its probabilities stray from the best achievable ones.
#
# Which model:
# - `MICROMOMENT_TRACKING_URI` and `MICROMOMENT_RUN_ID`: the model logged by that run;
# - `MICROMOMENT_TRACKING_URI` alone: the registered champion, `models:/micro_moment_intent@champion`;
# - neither: the notebook generates a small synthetic data set, trains a model on it with the
#   project's `train` config and registers it in a throwaway SQLite store (gone when the kernel
#   stops), so the report always runs from top to bottom.
#
# The error analysis scores the model on **fresh** generated sessions (a seed the model never
# saw), which carry both the true intent and the generator's Bayes-optimal posterior
# `bayes_p_<intent>`: the best any model could predict from what a session and its journey
# show. It therefore needs a model trained on the synthetic layout (`data=synthetic`).

# %% tags=["parameters"]
import os

TRACKING_URI = os.environ.get("MICROMOMENT_TRACKING_URI", "")  # empty: train a tiny model here
RUN_ID = os.environ.get("MICROMOMENT_RUN_ID", "")  # empty: the registered champion
N_JOURNEYS = int(os.environ.get("MICROMOMENT_NB_N_JOURNEYS", "3000"))  # fresh sessions to score
MODEL_NAME = "micro_moment_intent"
ALIAS = "champion"
THREADS = 1
TRAIN_SEED = 7  # generator seed of the data a tiny model is trained on (when training here)
EVAL_SEED = 20240  # generator seed of the fresh evaluation sessions
GENERATOR = "default"  # generator config: conf/generator/<name>.yaml

# %%
# ruff: noqa: E402 -- the imports follow the parameters cell
import tempfile
import warnings
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from IPython.display import Image, display
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import pipelines.config
from pipelines.config.schema import register_configs
from pipelines.core import modelling
from pipelines.core.synthetic import GeneratorParams, generate_chunks
from pipelines.engines.local import generate
from pipelines.reports import plots
from pipelines.stages.train import train
from pipelines.tracking.registry import load_scorer
from pipelines.tracking.runs import redact
from pipelines.tracking.train_run import log_and_register

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
warnings.filterwarnings("ignore", message="IProgress not found")  # no widgets: plain progress
pd.set_option("display.width", 120)

# %%
plt.rcParams["figure.dpi"] = 90

# %% [markdown]
# ## The model
#
# Without a tracking URI, a tiny model is trained here: synthetic journeys are generated, and the
# `train` config is composed with Hydra as `micromoment train` would compose it, pointed at that
# data and at a temporary SQLite store. `registry.gate=true` makes it the champion (the first
# model always is).

# %%
register_configs()
with hydra.initialize_config_dir(config_dir=pipelines.config.CONF_DIR, version_base="1.3"):
    gen_cfg = OmegaConf.to_container(
        hydra.compose("generate", overrides=[f"generator={GENERATOR}"]), resolve=True
    )
    if not TRACKING_URI:
        if RUN_ID:
            raise ValueError(
                "MICROMOMENT_RUN_ID names a run in a tracking store: set MICROMOMENT_TRACKING_URI too"
            )
        workdir = tempfile.TemporaryDirectory(prefix="micromoment-report-")
        work = Path(workdir.name)
        overrides = [
            f"output_dir={work}",
            f"data.path={work}/synthetic/sessions",
            f"data.stores_path={work}/synthetic/stores.csv",
            f"tracking.uri=sqlite:///{work}/mlflow.db",
            f"runtime.threads={THREADS}",
            "registry.gate=true",
        ]
        train_cfg = OmegaConf.to_container(
            hydra.compose("train", overrides=overrides), resolve=True
        )
params = GeneratorParams.from_config(gen_cfg["generator"])

if not TRACKING_URI:
    generate(
        {
            **gen_cfg["generate"],
            "out_dir": str(work / "synthetic"),
            "n_journeys": N_JOURNEYS,
            "seed": TRAIN_SEED,
        },
        gen_cfg["generator"],
    )
    result = train(train_cfg)
    summary = log_and_register(train_cfg, result, overrides, str(work))
    TRACKING_URI = train_cfg["tracking"]["uri"]
    print(f"trained and registered version {summary['registered_version']} in {TRACKING_URI}")

# %%
mlflow.set_tracking_uri(TRACKING_URI)
mlflow.set_registry_uri(TRACKING_URI)
client = MlflowClient()
if RUN_ID:
    run_id = RUN_ID
    model_uri = f"runs:/{RUN_ID}/model"
else:
    run_id = client.get_model_version_by_alias(MODEL_NAME, ALIAS).run_id
    model_uri = f"models:/{MODEL_NAME}@{ALIAS}"
run = client.get_run(run_id)
model, info = load_scorer(model_uri, THREADS)
classes = list(model.classes)

registered = (
    f"{info['model_name']} version {info['model_version']}"
    if info["model_version"]
    else "not registered"
)
print(f"tracking:  {redact(TRACKING_URI)}")
print(f"run id:    {run_id} ({run.info.run_name})")
print(f"model:     {model_uri} ({registered})")
print(f"classes:   {', '.join(classes)}")
print(f"features:  {len(model.featurizer.feature_names_)}")
settings = [
    "data.name",
    "split.by",
    "features.history",
    "model.params.learning_rate",
    "model.params.num_leaves",
]
display(
    pd.Series({k: run.data.params.get(k, "") for k in settings}, name="value")
    .rename_axis("setting")
    .to_frame()
)

# %% [markdown]
# ## Headline metrics
#
# The test split of the training run, as logged. Read the model against its references:
# - **majority class**: always the most common intent. Anything useful is far above it.
# - **logistic regression**: a linear model on the same features; the gap to it is what
#   LightGBM's interactions add.
# - **Bayes-optimal** (synthetic data only): the generator's own posterior, the ceiling. The
#   ratio to it is the honest score; on a large training set the model gets close to 100% of
#   Bayes accuracy, on a tiny one it stays further below.
#
# Log-loss and ECE are lower-is-better; they judge the probabilities, which matter when
# touchpoints are chosen by expected value rather than by the top intent alone.

# %%
m = run.data.metrics
for key in ("test/accuracy", "test/macro_f1", "test/logloss"):
    print(f"{key}: {m[key]:.4f}")
references = {
    "model": "test",
    "Bayes-optimal": "test/bayes",
    "logistic regression": "test/logreg",
    "majority class": "test/majority",
}
headline = pd.DataFrame(
    {
        name: {
            k: m.get(f"{prefix}/{k}", np.nan) for k in ("accuracy", "macro_f1", "logloss", "ece")
        }
        for name, prefix in references.items()
        if f"{prefix}/accuracy" in m
    }
).T
display(headline.round(4))
if "test/ratio_to_bayes/accuracy" in m:
    print(
        f"model at {m['test/ratio_to_bayes/accuracy']:.1%} of Bayes-optimal accuracy, "
        f"log-loss {m['test/ratio_to_bayes/logloss']:.2f} x the Bayes log-loss"
    )
if "data/rows_in" in m:
    print(
        f"rows: {int(m['data/rows_in'])} in, {int(m['data/rows_rejected'])} rejected; "
        f"train {int(m.get('data/train_rows', 0))}, val {int(m.get('data/val_rows', 0))}, "
        f"test {int(m.get('data/test_rows', 0))}"
    )

per_class = pd.DataFrame(
    {
        stat: {c: m.get(f"test/{stat}_{c}", np.nan) for c in classes}
        for stat in ("precision", "recall", "f1", "support")
    }
)
display(per_class.round(3))

# %% [markdown]
# ## Plots logged by the run
#
# - **confusion matrix**: each row a true intent, read across as "of the sessions with this
#   intent, the share predicted as each". The off-diagonal cells are the intents the model
#   mixes up (typically research against how-to and purchase sessions, which share devices,
#   channels and evening hours).
# - **reliability**: predicted probability against observed frequency per intent; dots on the
#   diagonal mean a predicted 70% happens 70% of the time.
# - **feature importance**: total gain per feature; expect pages, dwell and history on top.
# - **drivers by intent**: for the sessions predicted as each intent, the reasons pushing them
#   toward it on average (exact contributions grouped by input: a page type's count and share
#   are one reason); the same reasons `score.explain` gives per session.
# - **ROC and precision-recall**: how well each intent's sessions rank above the others (AUC and
#   average precision in the legend; the dotted line is the intent's share, what chance gives).
# - **cumulative gain and lift**: if a marketer targets the top 5%, 10% or 20% of sessions by an
#   intent's probability, the share of that intent's sessions reached, and how many times better
#   than targeting at random.

# %%
with tempfile.TemporaryDirectory() as tmp:
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="plots", dst_path=tmp
        )
        pngs = sorted(Path(local).glob("*.png"))
    except Exception as exc:  # a run from elsewhere may have logged no plots
        print(f"no plots logged by this run ({exc})")
        pngs = []
    for png in pngs:
        print(f"plots/{png.name}")
        display(Image(filename=str(png)))
print(f"{len(pngs)} logged plots")

# %% [markdown]
# ## Errors by segment, on fresh sessions
#
# The model scores new generated journeys (labelled, with the Bayes posterior), passed as raw
# sessions exactly as a consumer would pass them. Each segment shows the model's accuracy next to
# the Bayes-optimal accuracy on the same sessions: where both are low, the sessions are
# ambiguous by nature; where only the model is low, there is something left to learn.
#
# The first session of a journey has no history; later ones do. The gap between position 1 and
# the later positions shows how much the journey's past adds on top of the session's own context.

# %%
if sorted(classes) != sorted(params.intents):
    raise ValueError(
        f"the model predicts {classes}, the generator's intents are {list(params.intents)}: the "
        "error analysis needs a model trained on the synthetic layout (data=synthetic)"
    )
fresh = pd.concat(
    list(generate_chunks(params, N_JOURNEYS, N_JOURNEYS, seed=EVAL_SEED)), ignore_index=True
)
pred = model.predict(fresh.drop(columns=["intent"]), source="fresh synthetic sessions")
ok = pred["reject_reason"].isna().to_numpy()
print(f"{len(fresh)} fresh sessions in {N_JOURNEYS} journeys, {int((~ok).sum())} rejected")

fresh, pred = fresh[ok].reset_index(drop=True), pred[ok].reset_index(drop=True)
P = pred[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
B = fresh[[f"bayes_p_{c}" for c in classes]].to_numpy(dtype=float)
y = pd.Categorical(fresh["intent"], categories=classes).codes

local_time = fresh["started_at"].dt.tz_convert("UTC").dt.tz_localize(None) + pd.to_timedelta(
    fresh["utc_offset_min"], unit="m"
)
position = fresh.groupby("journey_id").cumcount() + 1
eps = 1e-12
ev = pd.DataFrame(
    {
        "session_id": fresh["session_id"],
        "device": fresh["device"],
        "channel": fresh["channel"],
        "region": fresh["region"],
        "position": np.where(position >= 5, "5+", position.astype(str)),
        "located": np.where(fresh["latitude"].notna(), "yes", "no"),
        "local_hour": local_time.dt.hour,
        "dwell_time_s": fresh["dwell_time_s"],
        "page_views": fresh["page_views"],
        "intent": fresh["intent"],
        "model_intent": np.asarray(classes)[P.argmax(axis=1)],
        "bayes_intent": np.asarray(classes)[B.argmax(axis=1)],
        "model_p": P.max(axis=1),
        "bayes_p": B.max(axis=1),
        "tv": 0.5 * np.abs(P - B).sum(axis=1),
        "kl": (B * (np.log(np.clip(B, eps, 1)) - np.log(np.clip(P, eps, 1)))).sum(axis=1),
    }
)
ev["correct"] = ev["model_intent"] == ev["intent"]
ev["bayes_correct"] = ev["bayes_intent"] == ev["intent"]

model_m = modelling.classification_metrics(y, P, classes)
bayes_m = modelling.classification_metrics(y, B, classes)
fresh_table = pd.DataFrame({"model": model_m, "Bayes-optimal": bayes_m}).loc[
    ["accuracy", "macro_f1", "logloss", "ece"]
]
display(fresh_table.round(4))
print(f"fresh accuracy: model {model_m['accuracy']:.4f}, Bayes-optimal {bayes_m['accuracy']:.4f}")


# %%
def by_segment(col: str) -> pd.DataFrame:
    g = ev.groupby(col, observed=True)
    return pd.DataFrame(
        {
            "sessions": g.size(),
            "model accuracy": g["correct"].mean(),
            "Bayes accuracy": g["bayes_correct"].mean(),
            "mean TV to Bayes": g["tv"].mean(),
        }
    )


segment_cols = ["device", "channel", "position"]
fig, axes = plt.subplots(
    1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [3, 8, 5]}, sharey=True
)
lowest = min(
    by_segment(col)[["model accuracy", "Bayes accuracy"]].to_numpy().min() for col in segment_cols
)
for ax, col in zip(axes, segment_cols, strict=True):
    seg = by_segment(col)
    x = np.arange(len(seg))
    ax.bar(x - 0.2, seg["model accuracy"], width=0.4, label="model")
    ax.bar(x + 0.2, seg["Bayes accuracy"], width=0.4, label="Bayes-optimal", color="lightgrey")
    ax.set_xticks(x, seg.index, rotation=45 if col == "channel" else 0, ha="right")
    ax.set_title(f"accuracy by {col}")
    ax.set_ylim(max(0.0, lowest - 0.1), 1)
axes[0].set_ylabel("accuracy (axis cut below)")
axes[0].legend(loc="lower left")
fig.tight_layout()
plt.show()
for col in segment_cols:
    display(by_segment(col).round(3))

# %% [markdown]
# ### Confusion by intent
#
# The model's confusion on the fresh sessions next to the Bayes-optimal one. Where the two
# matrices agree, the confusion is built into the data (those sessions look alike whatever the
# model); where the model's off-diagonal cells are larger, it has more to learn.

# %%
k = len(classes)
for name, proba in (("model", P), ("Bayes-optimal", B)):
    fig = plots.confusion_figure(modelling.normalised_confusion(y, proba, k), classes)
    fig.axes[0].set_title(f"{name}: confusion on fresh sessions")
    display(fig)  # `pipelines.reports.plots` draws without pyplot, so figures are shown explicitly

# %% [markdown]
# ## Where the model is far from the Bayes-optimal posterior
#
# Per session, two distances between the model's probabilities and the Bayes posterior:
# - **total variation** (TV): half the summed absolute differences, between 0 (identical) and 1
#   (disjoint); 0.1 means 10 points of probability sit on the wrong intents;
# - **KL divergence** from the Bayes posterior to the model: its mean is the model's excess
#   log-loss over the Bayes-optimal one (in expectation, since the true intents are drawn from
#   that posterior), so it says how much of the log-loss is the model's own.
#
# A healthy model has most sessions near zero and a thin tail. The segments and sessions with
# the largest gaps show what to fix: more training data, a missing feature, or a rare context
# the model has seen too little of.

# %%
print(
    f"mean total variation to the Bayes posterior: {ev['tv'].mean():.4f} "
    f"(median {ev['tv'].median():.4f}, 90th percentile {ev['tv'].quantile(0.9):.4f})"
)
print(
    f"mean KL(Bayes || model): {ev['kl'].mean():.4f} nats; "
    f"model log-loss minus Bayes log-loss on these sessions: "
    f"{model_m['logloss'] - bayes_m['logloss']:.4f}"
)
disagree = ev["model_intent"] != ev["bayes_intent"]
print(
    f"top intent differs from the Bayes one on {disagree.mean():.1%} of sessions; there the "
    f"model is right {ev.loc[disagree, 'correct'].mean():.1%} and Bayes "
    f"{ev.loc[disagree, 'bayes_correct'].mean():.1%} of the time"
    if disagree.any()
    else "the model's top intent matches the Bayes one on every session"
)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].hist(ev["tv"], bins=40, range=(0, 1), color="steelblue")
axes[0].set_xlabel("total variation to the Bayes posterior")
axes[0].set_ylabel("sessions")
axes[0].set_yscale("log")
axes[0].set_title("Distance per session (TV)")
kl_low = max(ev["kl"].quantile(0.001), 1e-6)
kl_bins = np.logspace(np.log10(kl_low), np.log10(max(ev["kl"].max(), kl_low * 10) * 1.1), 40)
axes[1].hist(np.clip(ev["kl"], kl_low, None), bins=kl_bins, color="darkorange")
axes[1].set_xscale("log")
axes[1].set_xlabel("KL(Bayes || model), nats (log scale)")
axes[1].set_title("Distance per session (KL)")
fig.tight_layout()
plt.show()

# %%
parts = []
for col in ("intent", "position", "device", "channel", "region", "located"):
    g = ev.groupby(col, observed=True)
    part = pd.DataFrame(
        {
            "sessions": g.size(),
            "mean TV": g["tv"].mean(),
            "mean KL": g["kl"].mean(),
            "model accuracy": g["correct"].mean(),
            "Bayes accuracy": g["bayes_correct"].mean(),
        }
    )
    part.index = [f"{'true intent' if col == 'intent' else col} = {v}" for v in part.index]
    parts.append(part)
segments = pd.concat(parts)
min_sessions = max(20, int(0.01 * len(ev)))
print(f"segments with at least {min_sessions} sessions, largest mean KL first")
display(
    segments[segments["sessions"] >= min_sessions]
    .sort_values("mean KL", ascending=False)
    .head(10)
    .round(3)
)

by_pos_intent = ev.pivot_table(index="intent", columns="position", values="tv", aggfunc="mean")
by_pos_intent = by_pos_intent.reindex([c for c in classes if c in by_pos_intent.index])
fig, ax = plt.subplots(figsize=(6, 3.2))
im = ax.imshow(by_pos_intent.to_numpy(dtype=float), cmap="Oranges", aspect="auto", vmin=0)
ax.set_xticks(range(by_pos_intent.shape[1]), by_pos_intent.columns)
ax.set_yticks(range(by_pos_intent.shape[0]), by_pos_intent.index)
ax.set_xlabel("position in the journey")
ax.set_ylabel("true intent")
ax.set_title("Mean TV to Bayes by true intent and position")
fig.colorbar(im, ax=ax)
fig.tight_layout()
plt.show()

# %% [markdown]
# The sessions with the largest gaps: the context the model saw, the true intent, and the top
# intent with its probability for the model and for Bayes.

# %%
worst = ev.nlargest(10, "kl").assign(
    model=lambda d: d["model_intent"] + " " + d["model_p"].map("{:.2f}".format),
    bayes=lambda d: d["bayes_intent"] + " " + d["bayes_p"].map("{:.2f}".format),
)
display(
    worst[
        [
            "session_id",
            "position",
            "device",
            "channel",
            "local_hour",
            "dwell_time_s",
            "page_views",
            "located",
            "intent",
            "model",
            "bayes",
            "tv",
            "kl",
        ]
    ]
    .round(3)
    .reset_index(drop=True)
)

# %% [markdown]
# ## Reading the report
#
# - Compare the headline ratio to Bayes with the fresh-data one: they should agree up to
#   sampling noise (the test split and the fresh sample are both small on tiny data). A test
#   score well above the fresh one points at a test split that is not independent of training.
# - Segment gaps that shrink with more training data are a data-volume problem; gaps that stay
#   put on a large training set point at a feature the model lacks (or a feature whose levels
#   were too rare in training: `features.min_category_count`).
# - Large TV on sessions whose Bayes posterior is confident means the model is overconfident
#   or wrong where the answer was knowable; large TV where Bayes itself is unsure is usually
#   miscalibration, which the reliability plot shows too.
