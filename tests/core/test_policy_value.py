"""Policy value before launch: off-policy estimators held to hand-worked numbers and known truth."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.core import policy_value as pv

# ---------------------------------------------------------------------------------------------
# a hand-worked example: 4 logged decisions, 2 touchpoints
#
#   row  shown a  propensity p  converted r  target  w = pi_e(a|x) / p  q_hat (touchpoint 0, 1)
#    0      0        0.50           1          0          2              0.6, 0.2
#    1      1        0.25           0          1          4              0.3, 0.4
#    2      0        0.80           0          1          0              0.5, 0.1
#    3      1        0.50           1          1          2              0.2, 0.5

HAND_ACTION = [0, 1, 0, 1]
HAND_PROPENSITY = [0.5, 0.25, 0.8, 0.5]
HAND_REWARD = [1.0, 0.0, 0.0, 1.0]
HAND_TARGET = [0, 1, 1, 1]
HAND_Q = [[0.6, 0.2], [0.3, 0.4], [0.5, 0.1], [0.2, 0.5]]
Z50 = 0.6744897501960817  # the normal quantile of a 50% interval
Z95 = 1.959963984540054


def test_one_hot_marks_the_choice_and_minus_one_leaves_the_row_empty():
    expected = [[0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]]
    np.testing.assert_array_equal(pv.one_hot([1, -1, 0, 2], 3), expected)
    np.testing.assert_array_equal(pv.one_hot(pd.Series([1, -1, 0, 2]), 3), expected)
    assert pv.one_hot([], 2).shape == (0, 2)


@pytest.mark.parametrize(
    "choice,n_actions,message",
    [
        ([0, 3], 3, "choice must be integers in [-1, 2], got 3.0 at row 1"),
        ([0, -2], 3, "choice must be integers in [-1, 2], got -2.0 at row 1"),
        ([0.5], 3, "choice must be integers in [-1, 2], got 0.5 at row 0"),
        ([0, np.nan], 3, "choice must be integers in [-1, 2], got nan at row 1"),
        ([0], 0, "n_actions must be a positive integer, got 0"),
    ],
)
def test_one_hot_refuses_choices_it_cannot_place(choice, n_actions, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pv.one_hot(choice, n_actions)


def test_snips_by_hand():
    # sum w = 2 + 4 + 0 + 2 = 8, sum w r = 2 + 0 + 0 + 2 = 4: V = 4 / 8 = 0.5
    # se^2 = (2^2 0.5^2 + 4^2 0.5^2 + 0 + 2^2 0.5^2) / 8^2 = (1 + 4 + 1) / 64: se = sqrt(6) / 8
    # ESS = 8^2 / (4 + 16 + 4) = 8 / 3; the target takes the logged touchpoint on rows 0, 1, 3
    res = pv.snips(pv.one_hot(HAND_TARGET, 2), HAND_ACTION, HAND_PROPENSITY, HAND_REWARD, level=0.5)
    se = math.sqrt(6) / 8
    assert res.estimator == "SNIPS"
    assert res.value == pytest.approx(0.5)
    assert res.se == pytest.approx(se)
    assert (res.ci_low, res.ci_high) == pytest.approx((0.5 - Z50 * se, 0.5 + Z50 * se))
    assert res.effective_sample_size == pytest.approx(8 / 3)
    assert (res.n, res.rows, res.matched, res.reason) == (4, 4, 3, "")


def test_doubly_robust_by_hand():
    # term_i = q(x_i, target) + w_i (r_i - q(x_i, a_i)):
    #   row 0: 0.6 + 2 (1 - 0.6) = 1.4;  row 1: 0.4 + 4 (0 - 0.4) = -1.2
    #   row 2: 0.1 + 0 = 0.1;            row 3: 0.5 + 2 (1 - 0.5) = 1.5
    # V = (1.4 - 1.2 + 0.1 + 1.5) / 4 = 0.45
    # deviations 0.95, -1.65, -0.35, 1.05: squares sum to 4.85, sd = sqrt(4.85 / 3), se = sd / 2
    res = pv.doubly_robust(
        pv.one_hot(HAND_TARGET, 2), HAND_ACTION, HAND_PROPENSITY, HAND_REWARD, HAND_Q, level=0.5
    )
    se = math.sqrt(4.85 / 3) / 2
    assert res.estimator == "Doubly robust"
    assert res.value == pytest.approx(0.45)
    assert res.se == pytest.approx(se)
    assert (res.ci_low, res.ci_high) == pytest.approx((0.45 - Z50 * se, 0.45 + Z50 * se))
    assert res.effective_sample_size == pytest.approx(8 / 3)
    assert (res.n, res.rows, res.matched, res.reason) == (4, 4, 3, "")


def test_observed_by_hand_with_a_wilson_interval():
    # 1 conversion in 4: p = 0.25, se = sqrt(0.25 * 0.75 / 4)
    # Wilson: centre = (p + z^2 / 8) / (1 + z^2 / 4) = 0.3724669
    #         half = z / (1 + z^2 / 4) * sqrt(p (1 - p) / 4 + z^2 / 64) = 0.3268796
    #         interval = (0.0455873, 0.6993466)
    res = pv.observed([1, 0, 0, 0])
    denom = 1 + Z95**2 / 4
    centre = (0.25 + Z95**2 / 8) / denom
    half = Z95 / denom * math.sqrt(0.25 * 0.75 / 4 + Z95**2 / 64)
    assert res.estimator == "Observed"
    assert res.value == 0.25
    assert res.se == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    assert (res.ci_low, res.ci_high) == pytest.approx((centre - half, centre + half))
    assert (res.ci_low, res.ci_high) == pytest.approx((0.0455873, 0.6993581), abs=1e-6)
    assert (res.n, res.rows, res.matched, res.effective_sample_size) == (4, 4, 4, 4.0)


def test_observed_bounded_rewards_get_a_normal_interval():
    # mean 0.5, sample sd of (0.2, 0.4, 0.6, 0.8) = sqrt(0.2 / 3), se = sd / 2
    res = pv.observed([0.2, 0.4, 0.6, 0.8], level=0.5)
    se = math.sqrt(0.2 / 3) / 2
    assert res.value == pytest.approx(0.5)
    assert res.se == pytest.approx(se)
    assert (res.ci_low, res.ci_high) == pytest.approx((0.5 - Z50 * se, 0.5 + Z50 * se))


def test_intervals_are_clipped_to_where_a_conversion_rate_can_lie():
    # at 95% both hand-worked intervals reach past 0 and 1 (0.5 +- 1.96 x 0.306)
    pol = pv.one_hot(HAND_TARGET, 2)
    for res in (
        pv.snips(pol, HAND_ACTION, HAND_PROPENSITY, HAND_REWARD),
        pv.doubly_robust(pol, HAND_ACTION, HAND_PROPENSITY, HAND_REWARD, HAND_Q),
    ):
        assert (res.ci_low, res.ci_high) == (0.0, 1.0)


def test_a_doubly_robust_value_outside_0_1_is_reported_at_the_bound_inside_its_interval():
    # one matched row, reward 0, a model that says 0.9 where the policy acts and 0 elsewhere:
    # terms 0.9 + 4 x (0 - 0.9) = -2.7 and 0.9, mean -0.9, below any conversion rate
    pol = pv.one_hot([1, 1], 2)
    res = pv.doubly_robust(pol, [1, 0], [0.25, 0.5], [0.0, 1.0], np.array([[0.0, 0.9], [0.0, 0.9]]))
    assert res.value == 0.0
    assert res.ci_low == 0.0 <= res.ci_high


def test_rows_the_policy_does_not_act_on_are_left_out():
    # not acting on row 2 is the same as never having logged it, except for the count `n`
    pol = pv.one_hot([0, 1, -1, 1], 2)
    keep = [0, 1, 3]
    kept = (
        pv.one_hot([0, 1, 1], 2),
        np.take(HAND_ACTION, keep),
        np.take(HAND_PROPENSITY, keep),
        np.take(HAND_REWARD, keep),
    )
    both = [
        (
            pv.snips(pol, HAND_ACTION, HAND_PROPENSITY, HAND_REWARD),
            pv.snips(*kept),
        ),
        (
            pv.doubly_robust(pol, HAND_ACTION, HAND_PROPENSITY, HAND_REWARD, HAND_Q),
            pv.doubly_robust(*kept, np.take(HAND_Q, keep, axis=0)),
        ),
    ]
    for partial, dropped in both:
        assert (partial.n, partial.rows, dropped.rows) == (4, 3, 3)
        assert partial.value == pytest.approx(dropped.value)
        assert partial.se == pytest.approx(dropped.se)
        assert partial.effective_sample_size == pytest.approx(dropped.effective_sample_size)
    # DR over rows 0, 1, 3: (1.4 - 1.2 + 1.5) / 3
    assert both[1][0].value == pytest.approx(1.7 / 3)


def test_a_policy_that_never_takes_a_logged_touchpoint_has_no_value_and_says_why():
    never = pv.one_hot([1, 0, 1, 0], 2)  # always the touchpoint that was not shown
    for res in (
        pv.snips(never, HAND_ACTION, HAND_PROPENSITY, HAND_REWARD),
        pv.doubly_robust(never, HAND_ACTION, HAND_PROPENSITY, HAND_REWARD, HAND_Q),
    ):
        assert math.isnan(res.value) and math.isnan(res.ci_low) and math.isnan(res.ci_high)
        assert (res.rows, res.matched, res.effective_sample_size) == (4, 0, 0.0)
        assert "none of the logged touchpoints on the 4 journeys" in res.reason


def test_a_policy_that_acts_on_no_journey_has_no_value_and_says_why():
    idle = np.zeros((4, 2))
    res = pv.snips(idle, HAND_ACTION, HAND_PROPENSITY, HAND_REWARD)
    assert math.isnan(res.value) and res.rows == 0
    assert res.reason == "the policy acts on no journey"


def test_one_matched_row_gives_a_value_but_no_standard_error():
    # only row 0 matches: SNIPS is its reward, and one reward says nothing about the spread
    res = pv.snips(pv.one_hot([0, 0, 1, 0], 2), HAND_ACTION, HAND_PROPENSITY, HAND_REWARD)
    assert res.value == 1.0 and res.matched == 1
    assert math.isnan(res.se) and math.isnan(res.ci_low)
    assert "no standard error" in res.reason


def test_one_row_gives_a_value_but_no_standard_error():
    one = pv.doubly_robust(
        pv.one_hot([0, -1, -1, -1], 2), HAND_ACTION, HAND_PROPENSITY, HAND_REWARD, HAND_Q
    )
    # row 0's term, worked above, is 1.4: reported at 1, where a conversion rate can reach
    assert one.value == 1.0 and one.rows == 1
    assert math.isnan(one.se) and "no standard error" in one.reason
    seen = pv.observed([0.5])
    assert seen.value == 0.5 and math.isnan(seen.se) and math.isnan(seen.ci_high)


# ---------------------------------------------------------------------------------------------
# a simulated contextual bandit whose truth is known exactly: 6 contexts, 4 touchpoints, a
# logging policy pi0(a | x) that depends on the context, and conversion rates r(x, a)

P_X = np.array([0.25, 0.2, 0.2, 0.15, 0.1, 0.1])
PI0 = np.array(
    [
        [0.50, 0.25, 0.15, 0.10],
        [0.10, 0.60, 0.20, 0.10],
        [0.40, 0.10, 0.40, 0.10],
        [0.10, 0.15, 0.15, 0.60],
        [0.30, 0.30, 0.30, 0.10],
        [0.60, 0.20, 0.10, 0.10],
    ]
)
# rates near 0 and 1 on the best touchpoints, which the logging policy rarely shows: the weights
# are large (up to 10) and a good reward model removes most of the noise they carry
RATE = np.array(
    [
        [0.05, 0.10, 0.20, 0.95],
        [0.04, 0.02, 0.03, 0.05],
        [0.02, 0.95, 0.10, 0.05],
        [0.03, 0.02, 0.01, 0.01],
        [0.10, 0.20, 0.60, 0.10],
        [0.05, 0.02, 0.02, 0.90],
    ]
)
BEST = RATE.argmax(axis=1)  # the target: the best touchpoint in each context
TRUE_BEST = float(P_X @ RATE[np.arange(6), BEST])  # 0.592
# a second target that does not act on contexts 4 and 5 (held out, say): its value is per
# journey it acts on
PARTIAL = np.where(np.arange(6) < 4, BEST, -1)
TRUE_PARTIAL = float(P_X[:4] @ RATE[np.arange(4), BEST[:4]] / P_X[:4].sum())
REPLICATIONS, N = 300, 2000


def log_decisions(rng: np.random.Generator, n: int):
    """n logged decisions: contexts, the touchpoint pi0 showed, its propensity, converted."""
    x = rng.choice(len(P_X), size=n, p=P_X)
    shown = (rng.random(n)[:, None] > PI0[x].cumsum(axis=1)).sum(axis=1)
    converted = (rng.random(n) < RATE[x, shown]).astype(float)
    return x, shown, PI0[x, shown], converted


@pytest.fixture(scope="module")
def replications() -> dict[str, tuple[float, list[pv.PolicyValue]]]:
    """Each estimator's results over independent logs, with the true value it estimates."""
    rng = np.random.default_rng(17)
    out = {key: [] for key in ("snips", "dr", "dr_bad_model", "snips_partial", "dr_partial")}
    for _ in range(REPLICATIONS):
        x, shown, p, r = log_decisions(rng, N)
        best, partial = pv.one_hot(BEST[x], 4), pv.one_hot(PARTIAL[x], 4)
        out["snips"].append(pv.snips(best, shown, p, r))
        out["dr"].append(pv.doubly_robust(best, shown, p, r, RATE[x]))
        # badly wrong: the model predicts 1 - the true rate everywhere
        out["dr_bad_model"].append(pv.doubly_robust(best, shown, p, r, 1 - RATE[x]))
        out["snips_partial"].append(pv.snips(partial, shown, p, r))
        out["dr_partial"].append(pv.doubly_robust(partial, shown, p, r, RATE[x]))
    truth = {key: TRUE_PARTIAL if key.endswith("partial") else TRUE_BEST for key in out}
    return {key: (truth[key], results) for key, results in out.items()}


ESTIMATES = ["snips", "dr", "dr_bad_model", "snips_partial", "dr_partial"]


@pytest.mark.parametrize("key", ESTIMATES)
def test_95_percent_intervals_cover_the_true_value(replications, key):
    truth, results = replications[key]
    covered = np.mean([r.ci_low <= truth <= r.ci_high for r in results])
    assert 0.92 <= covered <= 0.98, f"{key}: {covered:.3f}"


@pytest.mark.parametrize("key", ESTIMATES)
def test_estimates_are_unbiased(replications, key):
    truth, results = replications[key]
    values = np.array([r.value for r in results])
    se_of_mean = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - truth) < 3 * se_of_mean, f"{key}: {values.mean()} vs {truth}"


def test_reported_standard_errors_match_the_spread_over_replications(replications):
    for key in ESTIMATES:
        _, results = replications[key]
        spread = np.std([r.value for r in results], ddof=1)
        reported = np.mean([r.se for r in results])
        assert reported == pytest.approx(spread, rel=0.15), key


def test_a_true_reward_model_makes_doubly_robust_much_tighter_than_snips(replications):
    snips = np.var([r.value for r in replications["snips"][1]], ddof=1)
    dr = np.var([r.value for r in replications["dr"][1]], ddof=1)
    bad = np.var([r.value for r in replications["dr_bad_model"][1]], ddof=1)
    assert dr < 0.5 * snips  # about 0.3 here
    assert bad > snips  # a wrong model costs variance, not bias (see above)


def test_partial_policy_counts_only_the_journeys_it_acts_on(replications):
    _, results = replications["snips_partial"]
    share = np.mean([r.rows / r.n for r in results])
    assert share == pytest.approx(P_X[:4].sum(), abs=0.01)


def test_snips_of_the_logging_policy_itself_is_the_observed_mean():
    x, shown, p, r = log_decisions(np.random.default_rng(3), 500)
    res = pv.snips(PI0[x], shown, p, r)  # a stochastic target equal to the logging policy
    seen = pv.observed(r)
    assert res.value == seen.value == r.mean()
    assert res.se == pytest.approx(seen.se)  # all weights 1: the sandwich is the binomial se
    assert res.effective_sample_size == pytest.approx(500)
    assert res.matched == 500


# ---------------------------------------------------------------------------------------------
# the table, and inputs refused with one line naming the argument


def test_compare_policies_has_one_row_per_policy_and_estimator():
    policies = {
        "Touchpoint 0 for everyone": pv.one_hot([0, 0, 0, 0], 2),
        "The feed's choice": pv.one_hot(HAND_TARGET, 2),
        "Never shown": pv.one_hot([1, 0, 1, 0], 2),
    }
    table = pv.compare_policies(
        policies, pd.Series(HAND_ACTION), HAND_PROPENSITY, HAND_REWARD, HAND_Q, 0.5
    )
    assert list(table.columns) == pv.COLUMNS
    assert list(zip(table["policy"], table["estimator"], strict=True)) == [
        (pv.LOGGING_POLICY, "Observed"),
        ("Touchpoint 0 for everyone", "SNIPS"),
        ("Touchpoint 0 for everyone", "Doubly robust"),
        ("The feed's choice", "SNIPS"),
        ("The feed's choice", "Doubly robust"),
        ("Never shown", "SNIPS"),
        ("Never shown", "Doubly robust"),
    ]
    feed = table[table["policy"] == "The feed's choice"].set_index("estimator")
    assert feed.loc["SNIPS", "conversion_rate"] == pytest.approx(0.5)
    assert feed.loc["Doubly robust", "conversion_rate"] == pytest.approx(0.45)
    assert feed.loc["SNIPS", "matched"] == 3
    assert table["conversion_rate"].iloc[0] == 0.5  # what was shown converted 2 in 4
    never = table[table["policy"] == "Never shown"]
    assert never["conversion_rate"].isna().all() and (never["reason"] != "").all()


GOOD = {
    "policy": pv.one_hot(HAND_TARGET, 2),
    "logged_action": HAND_ACTION,
    "propensity": HAND_PROPENSITY,
    "reward": HAND_REWARD,
    "q_hat": HAND_Q,
}


@pytest.mark.parametrize(
    "argument,bad,message",
    [
        ("propensity", [0.5, 0.0, 0.8, 0.5], "propensity must be in (0, 1], got 0.0 at row 1"),
        ("propensity", [0.5, 1.2, 0.8, 0.5], "propensity must be in (0, 1], got 1.2 at row 1"),
        ("propensity", [0.5, np.nan, 0.8, 0.5], "propensity must be in (0, 1], got nan at row 1"),
        (
            "propensity",
            [0.5, 0.5],
            "propensity must have one value per logged_action (4), got (2,)",
        ),
        ("propensity", ["a", "b", "c", "d"], "propensity must be numbers, got ['a', 'b'"),
        ("reward", [1.0, 2.0, 0.0, 1.0], "reward must be in [0, 1], got 2.0 at row 1"),
        ("reward", [1.0, -0.5, 0.0, 1.0], "reward must be in [0, 1], got -0.5 at row 1"),
        ("reward", [1.0, 0.0, np.nan, 1.0], "reward must be in [0, 1], got nan at row 2"),
        (
            "logged_action",
            [0, 1, 2, 1],
            "logged_action must be integers in [0, 1], got 2.0 at row 2",
        ),
        (
            "logged_action",
            [0, 1, 0.5, 1],
            "logged_action must be integers in [0, 1], got 0.5 at row 2",
        ),
        ("logged_action", [], "logged_action is empty"),
        ("policy", [[1, 0], [0, 1]], "policy must have one row per logged_action (4), got 2 rows"),
        ("policy", [1, 0, 0, 1], "policy must be a (logged decisions, touchpoints) matrix"),
        (
            "policy",
            [[1, 0], [0.5, 0], [0, 1], [0, 1]],
            "policy rows must sum to 1 (acts) or 0 (does not act), got 0.5 at row 1",
        ),
        (
            "policy",
            [[1, 0], [-0.5, 1.5], [0, 1], [0, 1]],
            "policy must hold probabilities in [0, 1], got -0.5 at row 1, touchpoint 0",
        ),
        ("q_hat", [[0.5, 0.5]], "q_hat must have the policy's shape (4, 2), got (1, 2)"),
        (
            "q_hat",
            [[0.6, 0.2], [0.3, np.nan], [0.5, 0.1], [0.2, 0.5]],
            "q_hat must be predicted rates in [0, 1], got nan at row 1, touchpoint 1",
        ),
    ],
)
def test_bad_inputs_are_refused_naming_the_argument(argument, bad, message):
    if argument == "logged_action" and len(bad) == 0:
        args = {**GOOD, "policy": np.zeros((0, 2)), "propensity": [], "reward": [], argument: bad}
    else:
        args = {**GOOD, argument: bad}
    with pytest.raises(ValueError, match=re.escape(message)):
        pv.doubly_robust(**args)
    if argument != "q_hat":
        args.pop("q_hat")
        with pytest.raises(ValueError, match=re.escape(message)):
            pv.snips(**args)


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1])
def test_a_level_outside_zero_one_is_refused(level):
    with pytest.raises(ValueError, match=re.escape(f"level must be in (0, 1), got {level}")):
        pv.observed(HAND_REWARD, level=level)


def test_compare_policies_names_the_policy_that_breaks_the_rules():
    policies = {"ok": GOOD["policy"], "Search ad for everyone": np.full((4, 2), 0.7)}
    expected = "policies['Search ad for everyone'] rows must sum to 1 (acts) or 0"
    with pytest.raises(ValueError, match=re.escape(expected)):
        pv.compare_policies(policies, HAND_ACTION, HAND_PROPENSITY, HAND_REWARD, HAND_Q)
