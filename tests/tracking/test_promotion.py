"""The champion/challenger judgement: a first model becomes champion, a better one replaces it,
a worse one is kept out, and the decision is recorded on the version."""

from __future__ import annotations

from pipelines.tracking.registry import resolve_version

NAME = "micro_moment_intent"


def test_first_model_becomes_champion_and_a_better_one_replaces_it(registry_store, client):
    gates = [s["gate"] for s in registry_store["summaries"]]
    assert gates[0].promote and "first model" in gates[0].reason
    assert gates[1].promote and gates[1].challenger_score > gates[1].champion_score
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["gate.decision"] == "promoted"
    assert v2.tags["gate.previous_champion"] == "1"
    assert v2.tags["gate.data_fingerprint"]
    assert float(v2.tags["gate.challenger_score"]) > float(v2.tags["gate.champion_score"])


def test_worse_challenger_is_not_promoted(registry_store, client):
    third = registry_store["summaries"][2]["gate"]
    assert not third.promote
    v3 = client.get_model_version(NAME, "3")
    assert v3.tags["gate.decision"] == "kept_champion"
    assert v3.tags["gate.champion_version"] == "2"
    assert float(v3.tags["gate.challenger_score"]) < float(v3.tags["gate.champion_score"])
    # both were scored on the very same rows
    assert (
        v3.tags["gate.data_fingerprint"]
        == client.get_model_version(NAME, "2").tags["gate.data_fingerprint"]
    )
    assert resolve_version(client, NAME, "challenger") == "3"
