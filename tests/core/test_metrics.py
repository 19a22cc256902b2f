"""Ranking metrics, lift and gain, checked on small hand-built data whose answers are worked out
in the comments."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss

from pipelines.core.metrics import gain_curves, pr_curves, ranking_metrics, roc_curves

CLASSES = ["know", "go", "buy"]
BINARY = ["no", "yes"]

# six sessions ranked by p(yes): yes, no, yes, no, no, yes
SIX_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
SIX_LABELS = np.array([1, 0, 1, 0, 0, 1])
# ROC-AUC of yes: of the 3 x 3 (yes, no) pairs, 0.9 outranks all three no's, 0.7 outranks 0.6 and
# 0.5, 0.4 outranks none: 5 / 9.
SIX_AUC = 5 / 9
# AP of yes: precision at each yes found, times the recall step of 1/3: (1/1 + 2/3 + 3/6) / 3.
SIX_AP = 13 / 18
# AP of no, ranked by p(no) = 1 - p(yes), i.e. 0.6 yes, 0.5 no, 0.4 no, 0.3 yes, 0.2 no, 0.1 yes:
# no's found at ranks 2, 3, 5: (1/2 + 2/3 + 3/5) / 3 = 53 / 90.
SIX_AP_NO = 53 / 90


def perfect(y: np.ndarray, k: int) -> np.ndarray:
    """0.8 on the true class, the rest shared evenly: every class's sessions rank first."""
    proba = np.full((len(y), k), 0.2 / (k - 1))
    proba[np.arange(len(y)), y] = 0.8
    return proba


def reversed_ranker(y: np.ndarray, k: int) -> np.ndarray:
    """The true class always gets the lowest probability."""
    proba = np.full((len(y), k), 0.9 / (k - 1))
    proba[np.arange(len(y)), y] = 0.1
    return proba


def twenty_sessions() -> np.ndarray:
    """8 know, 10 go, 2 buy (a 10% class), shuffled so input order plays no part."""
    y = np.array([0] * 8 + [1] * 10 + [2] * 2)
    return np.random.default_rng(7).permutation(y)


# --- ranking metrics -----------------------------------------------------------------------


def test_a_perfect_ranker_scores_one_and_finds_the_class_as_fast_as_possible():
    y = twenty_sessions()
    m = ranking_metrics(y, perfect(y, 3), CLASSES)
    for c in CLASSES:
        assert m[f"roc_auc_{c}"] == 1.0
        assert m[f"avg_precision_{c}"] == 1.0
    assert m["roc_auc_macro"] == m["avg_precision_macro"] == 1.0
    # gain at q = min(1, q / base rate): q * 20 rows are all the class until it runs out
    # buy (base 0.10): top 1 row finds 1 of 2, top 2 rows both, top 4 rows both
    # know (base 0.40): 1, 2, 4 of 8;  go (base 0.50): 1, 2, 4 of 10
    expected_gain = {
        "buy": (0.5, 1.0, 1.0),
        "know": (0.125, 0.25, 0.5),
        "go": (0.1, 0.2, 0.4),
    }
    expected_lift = {"buy": (10.0, 10.0, 5.0), "know": (2.5, 2.5, 2.5), "go": (2.0, 2.0, 2.0)}
    for c in CLASSES:
        for q, g, lift in zip((5, 10, 20), expected_gain[c], expected_lift[c], strict=True):
            assert m[f"gain_{c}_at_{q}"] == pytest.approx(g)
            assert m[f"lift_{c}_at_{q}"] == pytest.approx(lift)


def test_lift_is_precision_over_base_rate_when_the_top_share_is_not_a_whole_number_of_rows():
    # 30 sessions, 3 buy (base 0.10), ranked perfectly. Top 5% = ceil(1.5) = 2 rows, both buy:
    # gain 2/3 and precision 1, so lift 1 / 0.10 = 10 (not gain / q = 13.3, above the maximum).
    # Top 10% = 3 rows: gain 1.
    y = np.array([2] * 3 + [0] * 27)
    m = ranking_metrics(y, perfect(y, 3), CLASSES)
    assert m["gain_buy_at_5"] == pytest.approx(2 / 3)
    assert m["lift_buy_at_5"] == pytest.approx(10.0)
    assert m["gain_buy_at_10"] == pytest.approx(1.0)
    assert m["lift_buy_at_10"] == pytest.approx(10.0)
    assert m["gain_buy_at_20"] == pytest.approx(1.0)  # 6 rows
    assert m["lift_buy_at_20"] == pytest.approx(5.0)


def test_a_reversed_ranker_has_auc_zero_and_finds_nothing_at_the_top():
    y = twenty_sessions()
    m = ranking_metrics(y, reversed_ranker(y, 3), CLASSES)
    for c in CLASSES:
        assert m[f"roc_auc_{c}"] == 0.0
    assert m["roc_auc_macro"] == 0.0
    # the top 4 rows by p(buy) are 4 of the 18 non-buy sessions
    assert m["gain_buy_at_20"] == 0.0
    assert m["lift_buy_at_20"] == 0.0


def test_six_hand_worked_sessions_give_the_hand_computed_auc_and_average_precision():
    # "buy" is the class scored; the others share what is left, 2:1
    y = np.where(SIX_LABELS == 1, 2, np.array([0, 1, 0, 1, 0, 1]))
    rest = 1 - SIX_SCORES
    proba = np.column_stack([2 / 3 * rest, 1 / 3 * rest, SIX_SCORES])
    m = ranking_metrics(y, proba, CLASSES)
    assert m["roc_auc_buy"] == pytest.approx(SIX_AUC)
    assert m["avg_precision_buy"] == pytest.approx(SIX_AP)


def test_ties_in_the_ranking_keep_the_input_order():
    # 200 sessions: the even rows share p(yes) = 0.6, the odd ones 0.4. The top 5% is 10 rows,
    # all from the tied even rows: the first ten of them in input order, rows 0, 2, ..., 18.
    p_yes = np.where(np.arange(200) % 2 == 0, 0.6, 0.4)
    proba = np.column_stack([1 - p_yes, p_yes])
    early, late = np.zeros(200, dtype=int), np.zeros(200, dtype=int)
    early[0:20:2] = 1  # yes on the first ten even rows
    late[180:200:2] = 1  # yes on the last ten even rows
    assert ranking_metrics(early, proba, BINARY)["gain_yes_at_5"] == 1.0
    assert ranking_metrics(early, proba, BINARY)["lift_yes_at_5"] == 20.0
    assert ranking_metrics(late, proba, BINARY)["gain_yes_at_5"] == 0.0


def test_brier_sums_squared_errors_over_classes_and_averages_over_rows():
    y = np.array([0, 1, 2])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    # row 1: 0.3² + 0.2² + 0.1² = 0.14;  row 2: 0.2² + 0.5² + 0.3² = 0.38;
    # row 3: 0.6² + 0.3² + 0.9² = 1.26;  mean 1.78 / 3
    m = ranking_metrics(y, proba, CLASSES)
    assert m["brier"] == pytest.approx(1.78 / 3)
    assert "brier_positive" not in m


def test_binary_brier_positive_is_sklearns_and_half_the_two_class_brier():
    proba = np.column_stack([1 - SIX_SCORES, SIX_SCORES])
    m = ranking_metrics(SIX_LABELS, proba, BINARY)
    # (0.1² + 0.8² + 0.3² + 0.6² + 0.5² + 0.6²) / 6 = 1.71 / 6
    assert m["brier_positive"] == pytest.approx(1.71 / 6)
    assert m["brier_positive"] == pytest.approx(brier_score_loss(SIX_LABELS, SIX_SCORES))
    # each row's error on "no" mirrors its error on "yes"
    assert m["brier"] == pytest.approx(2 * 1.71 / 6)


def test_top2_accuracy_breaks_ties_by_class_order():
    y = np.array([1, 2, 1, 2])
    proba = np.array(
        [
            [0.4, 0.3, 0.3],  # top two: know, go (go beats buy on the tie) -> go is in
            [0.4, 0.3, 0.3],  # same top two -> buy is out
            [0.2, 0.2, 0.6],  # top two: buy, know (know beats go on the tie) -> go is out
            [0.1, 0.6, 0.3],  # top two: go, buy -> buy is in
        ]
    )
    assert ranking_metrics(y, proba, CLASSES)["top2_accuracy"] == 0.5
    assert "top2_accuracy" not in ranking_metrics(SIX_LABELS, perfect(SIX_LABELS, 2), BINARY)


def test_a_class_absent_from_y_is_nan_and_left_out_of_the_macro_without_warnings():
    # know and go are the six sessions' no and yes; buy never occurs and gets a tenth of p(no)
    y = SIX_LABELS
    proba = np.column_stack([0.9 * (1 - SIX_SCORES), SIX_SCORES, 0.1 * (1 - SIX_SCORES)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = ranking_metrics(y, proba, CLASSES)
    for key in ["roc_auc_buy", "avg_precision_buy"] + [
        f"{name}_buy_at_{q}" for name in ("gain", "lift") for q in (5, 10, 20)
    ]:
        assert math.isnan(m[key]), key
    # know ranks by 0.9 * p(no), the same order as p(no): AUC 5/9 and AP 53/90 (see the top)
    assert m["roc_auc_know"] == pytest.approx(SIX_AUC)
    assert m["avg_precision_know"] == pytest.approx(SIX_AP_NO)
    assert m["roc_auc_macro"] == pytest.approx(SIX_AUC)
    assert m["avg_precision_macro"] == pytest.approx((SIX_AP + SIX_AP_NO) / 2)


def test_when_one_class_is_all_of_y_no_auc_is_defined_and_nothing_warns():
    y = np.ones(20, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = ranking_metrics(y, perfect(y, 2), BINARY)
    for key in ("roc_auc_no", "roc_auc_yes", "roc_auc", "roc_auc_macro", "avg_precision_macro"):
        assert math.isnan(m[key]), key
    assert math.isnan(m["gain_no_at_5"])
    assert m["gain_yes_at_5"] == 0.05  # 1 of 20 rows, all of them yes
    assert m["lift_yes_at_5"] == 1.0


def test_on_two_classes_both_one_vs_rest_aucs_are_the_same_but_their_aps_differ():
    # p(no) = 1 - p(yes) ranks the sessions in exactly the reverse order, and "no" is the positive
    # class of its own ROC: every (no, yes) pair is ordered the same way, so AUC(no) = AUC(yes),
    # not 1 - AUC(yes). AP depends on which class is positive: 13/18 for yes, 53/90 for no.
    proba = np.column_stack([1 - SIX_SCORES, SIX_SCORES])
    m = ranking_metrics(SIX_LABELS, proba, BINARY)
    assert m["roc_auc"] == m["roc_auc_yes"] == pytest.approx(SIX_AUC)
    assert m["roc_auc_no"] == pytest.approx(SIX_AUC)
    assert m["roc_auc_no"] != pytest.approx(1 - m["roc_auc_yes"])
    assert m["avg_precision"] == m["avg_precision_yes"] == pytest.approx(SIX_AP)
    assert m["avg_precision_no"] == pytest.approx(SIX_AP_NO)


def test_inputs_that_do_not_fit_the_classes_are_refused():
    y = np.array([0, 1, 2])
    with pytest.raises(ValueError, match="one column per class"):
        ranking_metrics(y, np.full((3, 2), 0.5), CLASSES)
    with pytest.raises(ValueError, match="class codes 0..1"):
        ranking_metrics(y, np.full((3, 2), 0.5), BINARY)
    with pytest.raises(ValueError, match="at least two classes"):
        ranking_metrics(np.zeros(3, dtype=int), np.ones((3, 1)), ["know"])


# --- curves --------------------------------------------------------------------------------


def test_gain_curves_run_from_nothing_to_everything_without_falling():
    y = twenty_sessions()
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(3), size=len(y))
    for x, gain in gain_curves(y, proba, CLASSES).values():
        assert len(x) == 101
        assert (x[0], gain[0]) == (0.0, 0.0)
        assert (x[-1], gain[-1]) == (1.0, 1.0)
        assert np.all(np.diff(gain) >= 0)


def test_the_gain_curve_of_a_perfect_ranker_matches_the_hand_computed_gain():
    y = twenty_sessions()
    x, gain = gain_curves(y, perfect(y, 3), CLASSES, points=21)["buy"]
    # at 5% one of the two buy sessions (1 row), from 10% on both
    assert gain[1] == 0.5 and x[1] == pytest.approx(0.05)
    assert np.all(gain[2:] == 1.0)


def test_a_share_of_rows_rounds_up_to_whole_rows_without_floating_point_error():
    # 100 sessions, the 10 buy ranked first: at 7% targeted (7 rows; 0.07 * 100 is
    # 7.000000000000001 in floating point) 7 of 10 are found, at 7.5% (ceil 7.5 = 8 rows) 8.
    y = np.array([2] * 10 + [0] * 90)
    x, gain = gain_curves(y, perfect(y, 3), CLASSES, points=201)["buy"]
    assert x[14] == pytest.approx(0.07) and gain[14] == pytest.approx(0.7)
    assert x[15] == pytest.approx(0.075) and gain[15] == pytest.approx(0.8)


def test_roc_curves_run_from_the_origin_to_the_top_right():
    y = twenty_sessions()
    proba = np.random.default_rng(1).dirichlet(np.ones(3), size=len(y))
    for fpr, tpr in roc_curves(y, proba, CLASSES).values():
        assert (fpr[0], tpr[0]) == (0.0, 0.0)
        assert (fpr[-1], tpr[-1]) == (1.0, 1.0)


def test_pr_curves_rise_in_recall_from_zero_to_one():
    y = twenty_sessions()
    proba = np.random.default_rng(2).dirichlet(np.ones(3), size=len(y))
    for recall, precision in pr_curves(y, proba, CLASSES).values():
        assert recall[0] == 0.0 and recall[-1] == 1.0
        assert np.all(np.diff(recall) >= 0)
        assert np.all((precision >= 0) & (precision <= 1))


def test_curves_leave_out_classes_without_sessions():
    y = np.array([0, 1, 0, 1])
    proba = perfect(y, 3)
    assert list(roc_curves(y, proba, CLASSES)) == ["know", "go"]
    assert list(pr_curves(y, proba, CLASSES)) == ["know", "go"]
    assert list(gain_curves(y, proba, CLASSES)) == ["know", "go"]
