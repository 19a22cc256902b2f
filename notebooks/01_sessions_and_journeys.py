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
# # Sessions and journeys
#
# What micro-moment data looks like before any model sees it. A **session** is one visit (a
# micro-moment) with a hidden intent: *know* (research), *go* (find a store), *do* (get
# something done, how-to) or *buy*. A **journey** (the macro-moment) strings a customer's
# sessions together.
#
# The data here comes from the synthetic journey generator (`micromoment generate`), whose every
# parameter lives in `conf/generator/default.yaml`. The notebook generates a fresh sample unless
# `MICROMOMENT_DATA_DIR` points at a folder that `micromoment generate` wrote (with `sessions/` and
# `stores.csv`).
#
# Read each section with two questions in mind: *which observable signals separate the
# intents?* (what a model can learn) and *which moments matter to a marketer?* (where and when to
# show which touchpoint).

# %% tags=["parameters"]
import os

N_JOURNEYS = int(os.environ.get("MICROMOMENT_NB_N_JOURNEYS", "5000"))  # journeys to generate
DATA_DIR = os.environ.get("MICROMOMENT_DATA_DIR", "")  # a `micromoment generate` output folder
SEED = 7  # generator seed (when generating here)
GENERATOR = "default"  # generator config: conf/generator/<name>.yaml
NEAR_STORE_KM = 1.0  # "at a store" threshold, as features.near_store_km

# %%
# ruff: noqa: E402 -- the imports follow the parameters cell
import tempfile
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from omegaconf import OmegaConf

import pipelines.config
from pipelines.config.schema import register_configs
from pipelines.core.geo import haversine_km
from pipelines.core.scoring import journey_summary
from pipelines.core.synthetic import GeneratorParams
from pipelines.engines.local import generate
from pipelines.io.readers import read_sessions

pd.set_option("display.width", 120)
plt.rcParams["figure.dpi"] = 90

# %% [markdown]
# ## The data
#
# The generator's configuration is composed with Hydra exactly as the `micromoment generate`
# command composes it. Without a data folder, the sessions are generated into a temporary folder
# and read back with the same reader training uses.

# %%
register_configs()
with hydra.initialize_config_dir(config_dir=pipelines.config.CONF_DIR, version_base="1.3"):
    gen_cfg = OmegaConf.to_container(
        hydra.compose(
            "generate",
            overrides=[
                f"generator={GENERATOR}",
                f"generate.n_journeys={N_JOURNEYS}",
                f"generate.seed={SEED}",
            ],
        ),
        resolve=True,
    )
params = GeneratorParams.from_config(gen_cfg["generator"])

if DATA_DIR:
    source = Path(DATA_DIR)
else:
    workdir = tempfile.TemporaryDirectory(prefix="micromoment-sessions-")
    source = Path(workdir.name) / "synthetic"
    generate({**gen_cfg["generate"], "out_dir": str(source)}, gen_cfg["generator"])

# a generate output folder holds sessions/ and stores.csv; a sessions table alone works too
sessions = read_sessions(source / "sessions" if (source / "sessions").exists() else source)
stores_file = (source if (source / "sessions").exists() else source.parent) / "stores.csv"
stores = pd.read_csv(stores_file) if stores_file.exists() else params.stores_frame()

sessions["started_at"] = pd.to_datetime(sessions["started_at"], utc=True)
sessions = sessions.sort_values(
    ["journey_id", "started_at", "session_id"], kind="mergesort"
).reset_index(drop=True)
local_time = sessions["started_at"].dt.tz_localize(None) + pd.to_timedelta(
    sessions["utc_offset_min"], unit="m"
)
sessions["local_hour"] = local_time.dt.hour
sessions["position"] = sessions.groupby("journey_id").cumcount() + 1

INTENTS = [c for c in params.intents if c in set(sessions["intent"])]
INTENTS += sorted(set(sessions["intent"]) - set(INTENTS))
COLORS = dict(zip(INTENTS, plt.get_cmap("tab10").colors, strict=False))

n_journeys = sessions["journey_id"].nunique()
print(f"source: {source if DATA_DIR else 'generated here'}")
print(
    f"{len(sessions)} sessions in {n_journeys} journeys "
    f"({len(sessions) / n_journeys:.2f} sessions per journey), {len(stores)} stores"
)
display(sessions.head())

# %% [markdown]
# ## Intent mix
#
# How often each micro-moment occurs. This is the prior any model starts from, and the
# accuracy of always guessing the most common intent (the majority-class baseline every run
# reports). A marketer reads it as the volume of each moment: research sessions usually
# dominate, while go- and do-moments are rarer but very specific.

# %%
mix = sessions["intent"].value_counts(normalize=True).reindex(INTENTS).fillna(0.0)
display(mix.rename("share").to_frame().round(3))
print(f"intent mix sums to {mix.sum():.3f}")

fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(mix.index, mix.to_numpy(), color=[COLORS[c] for c in mix.index])
ax.set_ylabel("share of sessions")
ax.set_title("Intent mix")
for i, v in enumerate(mix.to_numpy()):
    ax.text(i, v, f"{v:.0%}", ha="center", va="bottom")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Context by intent
#
# Each intent leaves a different trace in the context of a session. Read the rows of each chart
# as "given this intent, where does the session come from":
#
# - **device**: go-moments happen on phones, on the move; know, do and buy split between
#   phone and desktop. A mobile session is therefore weak evidence of a go-moment on its own.
# - **entry channel**: research and how-to sessions start from organic search and social;
#   buy sessions come from e-mail, direct visits and paid search (offers); go-moments from
#   paid "near me" searches and app pushes. The channel mix per intent is where media budgets
#   meet intent.
# - **local hour**: each intent peaks at its own time of day (store look-ups around lunch,
#   research and buying in the evening). Scheduling pushes and bids by hour follows from it.
# - **pages viewed**: the strongest single signal. Store-locator pages mean *go*, how-to pages
#   mean *do*, cart and product pages mean *buy*.

# %%
device = pd.crosstab(sessions["intent"], sessions["device"], normalize="index").reindex(INTENTS)
channel = pd.crosstab(sessions["intent"], sessions["channel"], normalize="index").reindex(INTENTS)
page_cols = [c for c in sessions.columns if c.startswith("pages_")]
pages = sessions.groupby("intent")[page_cols].sum().reindex(INTENTS)
pages = pages.div(pages.sum(axis=1), axis=0).rename(columns=lambda c: c.removeprefix("pages_"))


def heatmap(ax, table: pd.DataFrame, title: str, fmt: str = "{:.0%}") -> None:
    """Row-normalised shares as a heatmap with the value in each cell."""
    values = table.to_numpy(dtype=float)
    ax.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9), aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(table.shape[0]), table.index)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v > 0.6 * values.max() else "black",
            )
    ax.set_title(title)


fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), gridspec_kw={"width_ratios": [3, 8, 5]})
heatmap(axes[0], device, "Device by intent")
heatmap(axes[1], channel, "Entry channel by intent")
heatmap(axes[2], pages, "Page types viewed by intent")
fig.tight_layout()
plt.show()

# %%
hours = (
    pd.crosstab(sessions["local_hour"], sessions["intent"], normalize="columns")
    .reindex(index=range(24), columns=INTENTS)
    .fillna(0.0)
)
fig, ax = plt.subplots(figsize=(8, 3.4))
for c in INTENTS:
    ax.plot(hours.index, hours[c], label=c, color=COLORS[c], marker="o", ms=3)
ax.set_xticks(range(0, 24, 2))
ax.set_xlabel("local hour of the session start")
ax.set_ylabel("share of the intent's sessions")
ax.set_title("When each intent happens (local time)")
ax.legend(ncols=len(INTENTS))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Dwell time by intent and device
#
# How long a session lasts is the second strongest signal: a go-moment is a quick look-up
# (about a minute), a do-moment is a long how-to session, research and buying sit in between.
# The spread is wide (note the log scale), so dwell time separates go from do well but know from
# buy poorly; the model has to combine it with pages and history. Device barely shifts the
# distribution within an intent: dwell reflects the task, not the screen.

# %%
devices = [d for d in params.devices if d in set(sessions["device"])]
devices += sorted(set(sessions["device"]) - set(devices))
fig, ax = plt.subplots(figsize=(10, 3.8))
width = 0.8 / len(devices)
for k, dev in enumerate(devices):
    groups, positions = [], []
    for i, c in enumerate(INTENTS):
        values = sessions.loc[
            (sessions["intent"] == c) & (sessions["device"] == dev), "dwell_time_s"
        ].to_numpy()
        if len(values):
            groups.append(np.maximum(values, 1.0))
            positions.append(i + (k - (len(devices) - 1) / 2) * width)
    if groups:
        box = ax.boxplot(
            groups,
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=False,
            manage_ticks=False,
        )
        for patch in box["boxes"]:
            patch.set_facecolor(plt.get_cmap("Set2").colors[k])
        ax.plot([], [], color=plt.get_cmap("Set2").colors[k], lw=8, label=dev)
ax.set_yscale("log")
ax.set_xticks(range(len(INTENTS)), INTENTS)
ax.set_ylabel("dwell time (s, log scale)")
ax.set_title("Dwell time by intent and device (boxes: quartiles; whiskers: 1.5 IQR)")
ax.legend(title="device")
fig.tight_layout()
plt.show()

dwell_minutes = sessions.pivot_table(
    index="intent", columns="device", values="dwell_time_s", aggfunc="median"
).reindex(INTENTS)
print("median dwell time (minutes)")
display((dwell_minutes / 60).round(1))

# %% [markdown]
# ## Journeys as sequences
#
# A journey is the ordered list of a customer's sessions. Three views:
#
# - **how long journeys are**: most are one to three sessions; a long tail keeps coming back.
#   Every session after the first carries history (what came before), which is why the model
#   does better later in a journey.
# - **the most common intent sequences** (read `know>do>buy` as research, then a how-to, then a
#   purchase): the paths a campaign should be designed around.
# - **transitions between consecutive intents**: each row is "after a session with this intent,
#   the next session's intent". Research leads to more research or a purchase, a store visit
#   often precedes a purchase, how-to moments come in runs. The right-hand matrix is the
#   generator's configured chain; the observed one should match it up to sampling noise.

# %%
journeys = journey_summary(sessions[["journey_id", "session_id", "started_at", "intent"]], [])
length = journeys["sessions"].value_counts().sort_index()

fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(length.index.astype(str), length.to_numpy() / length.sum(), color="slategray")
ax.set_xlabel("sessions in the journey")
ax.set_ylabel("share of journeys")
ax.set_title("Journey length")
fig.tight_layout()
plt.show()
print(f"mean journey length: {journeys['sessions'].mean():.2f} sessions")

top = journeys["intent_sequence"].value_counts().head(15)
display(
    pd.DataFrame(
        {"journeys": top, "share": (top / len(journeys)).round(3)},
    ).rename_axis("intent sequence")
)

# %%
prev_intent = sessions.groupby("journey_id")["intent"].shift(1)
pairs = sessions.assign(previous=prev_intent).dropna(subset=["previous"])
counts = pd.crosstab(pairs["previous"], pairs["intent"]).reindex(
    index=INTENTS, columns=INTENTS, fill_value=0
)
observed = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
configured = pd.DataFrame(params.transition, index=params.intents, columns=params.intents)
print(f"{len(pairs)} consecutive session pairs")
display(counts.rename_axis(index="previous intent", columns="next intent"))

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
heatmap(axes[0], observed, "Observed: next intent given previous")
heatmap(axes[1], configured, "Configured transition matrix")
for ax in axes:
    ax.set_xlabel("next intent")
    ax.set_ylabel("previous intent")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Distance to the nearest store
#
# Sessions that share their location (mostly phones) can be placed against the store
# network. Go-moments on a phone cluster within a few hundred metres of a store: someone
# looking up opening hours or stock on the way in. Other intents are spread over the whole city.
# For a marketer this is the "near me" moment: local listings and in-store offers work there.
# For the model, the distance is a strong go-signal, but only for the minority of sessions that
# are located, and only on top of the device.

# %%
located = sessions.dropna(subset=["latitude", "longitude"]).copy()
store_xy = stores[["latitude", "longitude"]].to_numpy(dtype=float)
located["store_km"] = haversine_km(
    located["latitude"].to_numpy()[:, None],
    located["longitude"].to_numpy()[:, None],
    store_xy[None, :, 0],
    store_xy[None, :, 1],
).min(axis=1)
located["near_store"] = located["store_km"] <= NEAR_STORE_KM

share_located = sessions.assign(located=sessions["latitude"].notna()).pivot_table(
    index="intent", columns="device", values="located", aggfunc="mean"
)
print(
    f"{len(located)} of {len(sessions)} sessions are located ({len(located) / len(sessions):.0%})"
)
print("share of sessions with a location, by intent and device")
display(share_located.reindex(INTENTS).round(2))

fig, ax = plt.subplots(figsize=(8, 3.6))
low = max(located["store_km"].min(), 1e-3) if len(located) else 1e-3
high = max(located["store_km"].max(), 1.0) * 1.05 if len(located) else 10.0
bins = np.logspace(np.log10(low), np.log10(high), 40)
for c in INTENTS:
    d = located.loc[located["intent"] == c, "store_km"]
    if len(d):
        weights = np.full(len(d), 1.0 / len(d))
        ax.hist(d, bins=bins, weights=weights, histtype="step", lw=2, color=COLORS[c], label=c)
ax.axvline(NEAR_STORE_KM, color="grey", ls="--", lw=1)
ax.text(NEAR_STORE_KM, ax.get_ylim()[1] * 0.9, f" {NEAR_STORE_KM:g} km", color="grey")
ax.set_xscale("log")
ax.set_xlabel("distance to the nearest store (km, log scale)")
ax.set_ylabel("share of the intent's located sessions")
ax.set_title("Located sessions: distance to the nearest store by intent")
ax.legend()
fig.tight_layout()
plt.show()

near = located.assign(
    device_group=np.where(located["device"] == "mobile", "mobile", "desktop/tablet")
).pivot_table(index="intent", columns="device_group", values="near_store", aggfunc="mean")
print(f"share of located sessions within {NEAR_STORE_KM:g} km of a store")
display(near.reindex(INTENTS).round(2))

# %% [markdown]
# ## What to take away
#
# - Pages viewed and dwell time carry much of the signal about a session's intent; device,
#   channel, hour and location sharpen it, and often only in combination (a phone at a store
#   means "go" while stores are open; a short session is research on a phone and a checkout
#   on a desk).
# - History matters: intents follow each other in typical patterns, and each journey belongs to
#   a hidden customer segment (researchers, deal seekers, local shoppers) whose sessions look
#   different for the same intent, so a session's intent is easier to tell once the journey's
#   earlier sessions are known (`docs/synthetic.md`).
# - Some sessions stay ambiguous whatever the model (a short research session looks like a
#   short purchase session). The generator writes the Bayes-optimal posterior of each session
#   (`bayes_p_<intent>`) as the best any model can do; `02_model_report` compares a trained model
#   with it.
