"""Evaluation metrics on tiny data, expected values worked out by hand in the comments.

The last tests run TFMA's own metrics (tests/tfma_checks.py: a Beam pipeline each, a few
seconds) on the same data.
"""
import itertools
import math

import numpy as np
import pytest

import tfma_checks
from hap.evaluation import auc_metrics as auc
from hap.evaluation import top_k_metrics as top_k

L3 = math.log2(3)  # the discount of rank 2 is 1 / log2(3)


def shuffled(seed, *arrays):
    """The same rows in another order: no metric may depend on the input order."""
    perm = np.random.default_rng(seed).permutation(len(arrays[0]))
    return [np.asarray(a)[perm] for a in arrays]


# --------------------------------------------------------------------------------------------
# auc_by_source

# EP: 0.8, 0.5. EN: 0.5, 0.2. RN: 0.8, 0.9. PRN: 0.1. No GN.
AUC_GROUPS = ["EP", "EN", "RN", "EP", "EN", "RN", "PRN"]
AUC_SCORES = [0.8, 0.5, 0.8, 0.5, 0.2, 0.9, 0.1]


def labels_of(groups):
    return [int(g == "EP") for g in groups]


def test_auc_by_source_ties_count_half():
    result = auc.auc_by_source(labels_of(AUC_GROUPS), AUC_SCORES, AUC_GROUPS)
    # EN: 0.8>0.5, 0.8>0.2, 0.5=0.5 (1/2), 0.5>0.2 -> 3.5 / 4
    assert result["auc_EP_vs_EN"].value == pytest.approx(0.875)
    # RN: 0.8=0.8 (1/2), 0.8<0.9, 0.5<0.8, 0.5<0.9 -> 0.5 / 4
    assert result["auc_EP_vs_RN"].value == pytest.approx(0.125)
    assert result["auc_EP_vs_PRN"].value == pytest.approx(1.0)
    assert result["auc_EP_vs_EN"].samples == 4 and result["auc_EP_vs_PRN"].samples == 3
    assert result["auc_EP_vs_EN"].requests is None  # pooled over requests


def test_auc_by_source_without_samples_is_nan_and_left_out_of_the_mean():
    result = auc.auc_by_source(labels_of(AUC_GROUPS), AUC_SCORES, AUC_GROUPS)
    assert math.isnan(result["auc_EP_vs_GN"].value)
    assert "no GN samples" in result["auc_EP_vs_GN"].note
    assert result["auc_mean"].value == pytest.approx((0.875 + 0.125 + 1.0) / 3)
    assert "auc_EP_vs_GN" in result["auc_mean"].note and "no GN samples" in result["auc_mean"].note


def test_auc_by_source_without_positives_is_nan_everywhere():
    groups = ["EN", "RN", "GN"]
    result = auc.auc_by_source([0, 0, 0], [0.1, 0.2, 0.3], groups)
    assert all(math.isnan(r.value) for r in result.values())
    assert "no EP samples" in result["auc_EP_vs_EN"].note


def test_auc_is_exact_for_logits_and_close_scores():
    # No binning: scores 1e-9 apart are ordered, and logits outside [0, 1] are fine.
    groups = ["EP", "EN", "EP", "RN"]
    result = auc.auc_by_source([1, 0, 1, 0], [1e-9, 0.0, -3.0, -5.0], groups)
    assert result["auc_EP_vs_EN"].value == pytest.approx(0.5)  # 1e-9 > 0, -3 < 0
    assert result["auc_EP_vs_RN"].value == pytest.approx(1.0)


def test_auc_by_source_rejects_labels_that_contradict_groups():
    with pytest.raises(ValueError, match="label"):
        auc.auc_by_source([1, 1], [0.3, 0.2], ["EP", "EN"])


# --------------------------------------------------------------------------------------------
# gauc

# r1: AUC 1/2 on 3 samples; r2: AUC 3/4 on 5 samples; r3 only positives; r4 only negatives.
GAUC_ROWS = [
    ("r1", 1, 0.9), ("r1", 0, 0.5), ("r1", 0, 0.95),
    ("r2", 1, 0.3), ("r2", 1, 0.7), ("r2", 0, 0.3), ("r2", 0, 0.1), ("r2", 0, 0.6),
    ("r3", 1, 0.2), ("r3", 1, 0.4),
    ("r4", 0, 0.2), ("r4", 0, 0.5), ("r4", 0, 0.9),
]


def test_gauc_weights_requests_by_their_samples():
    request, label, score = shuffled(0, *zip(*GAUC_ROWS))
    result = auc.gauc(request, label, score)
    # r1: 0.9 > 0.5, 0.9 < 0.95 -> 1/2. r2: 0.3 vs (0.3 tie, 0.1, 0.6) = 1.5, 0.7 beats all = 3
    # -> 4.5 / 6. Weighted by 3 and 5 samples (the unweighted mean would be 0.625).
    assert result.value == pytest.approx((3 * 0.5 + 5 * 0.75) / 8)
    assert (result.requests, result.samples, result.excluded_requests) == (2, 8, 2)
    assert "1 request(s) with only positives" in result.note
    assert "1 request(s) with only negatives" in result.note


def test_gauc_with_group_keeps_exposed_samples_only():
    rows = GAUC_ROWS[:8]
    groups = ["EP" if y else "EN" for _, y, _ in rows]
    # Unexposed negatives that outscore r1's positive and r2's best positive would lower the AUCs.
    request = [r for r, _, _ in rows] + ["r1", "r2", "r5"]
    label = [y for _, y, _ in rows] + [0, 0, 0]
    score = [s for _, _, s in rows] + [0.99, 0.99, 0.5]
    result = auc.gauc(request, label, score, group=groups + ["RN", "PRN", "GN"])
    assert result.value == pytest.approx((3 * 0.5 + 5 * 0.75) / 8)
    assert (result.requests, result.samples, result.excluded_requests) == (2, 8, 0)
    assert auc.gauc(request, label, score).value < result.value


def test_gauc_without_any_mixed_request_is_nan():
    result = auc.gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3])
    assert math.isnan(result.value) and result.requests == 0 and result.excluded_requests == 2


# --------------------------------------------------------------------------------------------
# hitrate_at_k, recall_at_k

TOPK_ROWS = [
    # A, K=2: 0.9 (no click) at rank 1, then a tie of 3 at ranks 2-4 holding 1 click, 1 slot left.
    ("A", 0, 0.9), ("A", 1, 0.7), ("A", 0, 0.7), ("A", 0, 0.7), ("A", 1, 0.1),
    # B, K=2: a tie of 3 at ranks 1-3 holding 2 clicks, 2 slots.
    ("B", 1, 0.5), ("B", 1, 0.5), ("B", 0, 0.5), ("B", 0, 0.2),
    # C: fewer candidates than K.
    ("C", 1, 0.3), ("C", 0, 0.8),
    # D: no click.
    ("D", 0, 0.3), ("D", 0, 0.6), ("D", 0, 0.1),
]


def test_hitrate_at_k_with_a_tie_at_the_cut_off():
    request, label, score = shuffled(1, *zip(*TOPK_ROWS))
    result = top_k.hitrate_at_k(request, label, score, k=2)
    # A: P(the click takes the 1 slot among 3) = 1 - C(2,1)/C(3,1) = 1/3.
    # B: 2 slots among 3 always hold a click (C(1,2) = 0) -> 1. C: 1.
    assert result.value == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert (result.requests, result.excluded_requests) == (3, 1)
    assert "1 request(s) without clicks excluded" in result.note


def test_recall_at_k_counts_the_straddling_tie_fractionally():
    request, label, score = shuffled(2, *zip(*TOPK_ROWS))
    result = top_k.recall_at_k(request, label, score, k=2)
    # A: 1 click x 1/3 of 2 clicks = 1/6. B: 2 clicks x 2/3 of 2 = 2/3. C: 1.
    assert result.value == pytest.approx((1 / 6 + 2 / 3 + 1) / 3)
    assert (result.requests, result.samples, result.excluded_requests) == (3, 11, 1)


def test_hitrate_is_hypergeometric_not_fractional():
    # A tie of 4 with 2 clicks, K=1: P(hit) = 1 - C(2,1)/C(4,1) = 1/2; recall = 2 x 1/4 / 2.
    request, label, score = ["q"] * 4, [1, 1, 0, 0], [0.6] * 4
    assert top_k.hitrate_at_k(request, label, score, 1).value == pytest.approx(0.5)
    assert top_k.recall_at_k(request, label, score, 1).value == pytest.approx(0.25)


def test_top_k_metrics_reach_one_when_k_covers_every_request():
    request, label, score = zip(*TOPK_ROWS)
    assert top_k.hitrate_at_k(request, label, score, 5).value == pytest.approx(1.0)
    assert top_k.recall_at_k(request, label, score, 5).value == pytest.approx(1.0)
    # K=1: A has no click at rank 1; B's tie of 3 with 2 clicks gives 2/3; C's click is 2nd.
    assert top_k.hitrate_at_k(request, label, score, 1).value == pytest.approx((0 + 2 / 3 + 0) / 3)


def test_top_k_metrics_without_clicks_are_nan():
    result = top_k.recall_at_k(["a", "a"], [0, 0], [0.2, 0.1], 1)
    assert math.isnan(result.value) and result.requests == 0 and result.excluded_requests == 1


# --------------------------------------------------------------------------------------------
# oracle_recall_at_k, ndcg_at_k

ORACLE_ROWS = [
    # R1: oracle top 2 = u5, u4; score top 3 = u4, u3, u2 -> 1/2.
    ("R1", 5, 0.1), ("R1", 4, 0.9), ("R1", 3, 0.8), ("R1", 2, 0.7), ("R1", 1, 0.6), ("R1", 0, 0.5),
    # R2: oracle top 2 = the two 3s; by score, 0.9 then a tie of 3 for 2 slots -> 2 x 2/3 / 2.
    ("R2", 1, 0.4), ("R2", 3, 0.4), ("R2", 3, 0.4), ("R2", 0, 0.9),
    # R3: all-zero utility, skipped.
    ("R3", 0, 0.3), ("R3", 0, 0.2), ("R3", 0, 0.1),
    # R4: a utility tie straddles the oracle cut-off: the 2 is relevant, each 1 counts 1/3;
    # score top 3 holds the three 1s -> (3 x 1/3) / 2.
    ("R4", 2, 0.1), ("R4", 1, 0.9), ("R4", 1, 0.2), ("R4", 1, 0.3),
]


def test_oracle_recall_at_k():
    request, utility, score = shuffled(3, *zip(*ORACLE_ROWS))
    result = top_k.oracle_recall_at_k(request, utility, score, k=3, top=2)
    assert result.value == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert (result.requests, result.samples, result.excluded_requests) == (3, 14, 1)
    assert "all-zero utility" in result.note


def test_oracle_recall_is_one_when_k_covers_the_request():
    assert top_k.oracle_recall_at_k(["a"] * 3, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], k=3, top=2).value == 1.0
    assert top_k.oracle_recall_at_k(["a"] * 3, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], k=1, top=2).value == 0.0


NDCG_ROWS = [
    # N1, K=2: by score u2, u0 (then u3): DCG = 2 + 0 / log2 3; IDCG = 3 + 2 / log2 3.
    ("N1", 3, 0.2), ("N1", 2, 0.9), ("N1", 0, 0.5),
    # N2: a tie of u1, u0 at ranks 1-2: E[DCG] = 1/2 (1 + 1 / log2 3); IDCG = 2 + 1 / log2 3.
    ("N2", 1, 0.5), ("N2", 0, 0.5), ("N2", 2, 0.1),
    # N3: all-zero gains, skipped.
    ("N3", 0, 0.5), ("N3", 0, 0.4),
    # N4: a tie of 3 straddling K=2: E[DCG] = 4/3 (1 + 1 / log2 3); IDCG = 4.
    ("N4", 4, 0.7), ("N4", 0, 0.7), ("N4", 0, 0.7),
]


def test_ndcg_at_k_with_ties_and_an_all_zero_request():
    request, utility, score = shuffled(4, *zip(*NDCG_ROWS))
    result = top_k.ndcg_at_k(request, utility, score, k=2)
    n1 = 2 / (3 + 2 / L3)
    n2 = 0.5 * (1 + 1 / L3) / (2 + 1 / L3)
    n4 = (4 / 3) * (1 + 1 / L3) / 4
    assert result.value == pytest.approx((n1 + n2 + n4) / 3)
    assert (result.requests, result.samples, result.excluded_requests) == (3, 9, 1)
    assert "1 request(s) with all-zero gains skipped" in result.note


def test_ndcg_is_one_for_the_oracle_order():
    utility = [0.5, 2.0, 1.0, 0.0]
    assert top_k.ndcg_at_k(["q"] * 4, utility, utility, k=2).value == pytest.approx(1.0)
    assert top_k.ndcg_at_k(["q"] * 4, utility, [-u for u in utility], k=2).value < 0.5


# --------------------------------------------------------------------------------------------
# Ties = the average over every order of the tied samples, enumerated.


def average_over_tie_orders(request, values, score, per_request):
    """Mean over requests of per_request(values in ranked order, all values), each averaged over
    every way of ordering equal scores."""
    request, values, score = map(np.asarray, (request, values, score))
    out = []
    for r in dict.fromkeys(request.tolist()):
        v, s = values[request == r], score[request == r]
        runs = [per_request(v[sorted(range(len(v)), key=lambda i: (-s[i], p[i]))], v)
                for p in itertools.permutations(range(len(v)))]
        if not any(x is None for x in runs):
            out.append(np.mean(runs))
    return np.mean(out)


def test_tie_rules_equal_the_average_over_all_tie_orders():
    request = ["a"] * 5 + ["b"] * 4
    label = [1, 0, 1, 0, 0, 0, 1, 0, 1]
    utility = [3.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 0.0, 4.0]
    score = [0.5, 0.5, 0.5, 0.9, 0.5, 0.2, 0.2, 0.2, 0.2]
    k = 2
    hit = average_over_tie_orders(request, label, score, lambda v, _: float(v[:k].sum() > 0))
    recall = average_over_tie_orders(request, label, score, lambda v, a: v[:k].sum() / a.sum())

    def dcg(g):
        return sum(x / math.log2(i + 2) for i, x in enumerate(g[:k]))

    ndcg = average_over_tie_orders(request, utility, score, lambda v, a: dcg(v) / dcg(np.sort(a)[::-1]))
    assert top_k.hitrate_at_k(request, label, score, k).value == pytest.approx(hit)
    assert top_k.recall_at_k(request, label, score, k).value == pytest.approx(recall)
    assert top_k.ndcg_at_k(request, utility, score, k).value == pytest.approx(ndcg)


# --------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("call, argument", [
    (lambda: auc.gauc(["a", "b"], [1, 0], [0.1]), "score"),
    (lambda: auc.gauc(["a"], [1, 0], [0.1, 0.2]), "label"),
    (lambda: auc.auc_by_source([1, 0], [0.2, 0.1], ["EP"]), "group"),
    (lambda: top_k.ndcg_at_k(["a", "a"], [1.0], [0.1, 0.2]), "utility"),
    (lambda: top_k.hitrate_at_k(["a", "a"], [1, 0], [0.1, 0.2, 0.3], 1), "score"),
])
def test_mismatched_lengths_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"^{argument} has length"):
        call()


@pytest.mark.parametrize("call", [
    lambda s: auc.auc_by_source([1, 0], s, ["EP", "EN"]),
    lambda s: auc.gauc(["a", "a"], [1, 0], s),
    lambda s: top_k.recall_at_k(["a", "a"], [1, 0], s, 1),
    lambda s: top_k.ndcg_at_k(["a", "a"], [1.0, 0.0], s, 1),
])
def test_nan_scores_are_rejected(call):
    with pytest.raises(ValueError, match="^score contains 1 NaN"):
        call([0.3, float("nan")])


@pytest.mark.parametrize("k", [0, -1, 1.5, True, None])
def test_k_must_be_a_positive_integer(k):
    for call in (top_k.hitrate_at_k, top_k.recall_at_k):
        with pytest.raises(ValueError, match="^k must be an integer >= 1"):
            call(["a"], [1], [0.1], k)
    with pytest.raises(ValueError, match="^k must be an integer >= 1"):
        top_k.ndcg_at_k(["a"], [1.0], [0.1], k)
    with pytest.raises(ValueError, match="^k must be an integer >= 1"):
        top_k.oracle_recall_at_k(["a"], [1.0], [0.1], k)


def test_other_invalid_inputs_name_the_argument():
    with pytest.raises(ValueError, match="^top must"):
        top_k.oracle_recall_at_k(["a"], [1.0], [0.1], k=1, top=0)
    with pytest.raises(ValueError, match="^utility must be finite and >= 0"):
        top_k.ndcg_at_k(["a", "a"], [1.0, -0.5], [0.1, 0.2], 1)
    with pytest.raises(ValueError, match="^utility contains 1 NaN"):
        top_k.ndcg_at_k(["a", "a"], [1.0, float("nan")], [0.1, 0.2], 1)
    with pytest.raises(ValueError, match="^label must be 0 or 1"):
        auc.gauc(["a", "a"], [1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="^group must be one of"):
        auc.auc_by_source([1, 0], [0.1, 0.2], ["EP", "XN"])
    with pytest.raises(ValueError, match="^score must be a 1-D array"):
        auc.gauc(["a"], [1], [[0.1]])


def test_empty_input_gives_nan_on_zero_requests():
    assert math.isnan(auc.gauc([], [], []).value)
    result = top_k.ndcg_at_k([], [], [], 10)
    assert math.isnan(result.value) and result.requests == 0


def test_request_ids_of_any_dtype():
    request, label, score = zip(*GAUC_ROWS)
    codes = {"r1": 7, "r2": -3, "r3": 10**12, "r4": 0}
    expected = auc.gauc(request, label, score).value
    assert auc.gauc([codes[r] for r in request], label, score).value == expected
    assert auc.gauc(np.array(request, dtype=bytes), label, score).value == expected


# --------------------------------------------------------------------------------------------
# TFMA's own metrics on the same data (each call runs a Beam pipeline)


def test_auc_by_source_matches_tfma():
    groups = ["EP", "EN", "EN", "RN", "PRN", "EP", "EN", "RN", "RN", "PRN", "EP"]
    # Logits, ties within and across groups; no GN samples.
    scores = [2.0, 1.5, 2.0, -0.5, -2.0, 0.3, 0.3, 1.1, -1.0, 2.0, 0.8]
    checks = tfma_checks.tfma_cross_check_auc(labels_of(groups), scores, groups)
    for name in ("auc_EP_vs_EN", "auc_EP_vs_RN", "auc_EP_vs_PRN", "auc_mean"):
        assert checks[name].comparable, checks[name]
        assert checks[name].agrees, checks[name]
    # Undefined here; TFMA has the slice of the EP rows only and reports 0.0.
    assert not checks["auc_EP_vs_GN"].comparable and math.isnan(checks["auc_EP_vs_GN"].numpy_value)


def test_ndcg_and_oracle_recall_match_tfma():
    rng = np.random.default_rng(5)
    request = np.repeat(["q1", "q2", "q3", "q4"], 8)
    utility = rng.permutation(32) / 4.0
    utility[24:] = 0.0  # q4: all-zero gains, skipped here and weighted 0 by TFMA
    score = rng.permutation(32) / 32.0
    score[24:] = 0.5  # ties where they cannot matter
    checks = tfma_checks.tfma_cross_check_funnel(request, utility, score, k=4, top=2)
    for name in ("ndcg", "oracle_recall"):
        assert checks[name].comparable, checks[name]
        assert checks[name].agrees, checks[name]
    assert checks["ndcg"].numpy_value == pytest.approx(top_k.ndcg_at_k(request, utility, score, 4).value)


def test_tfma_cross_check_flags_ties_it_breaks_arbitrarily():
    request = ["q"] * 5
    utility = [4.0, 1.0, 3.0, 0.0, 2.0]
    score = [0.9, 0.9, 0.5, 0.5, 0.1]  # a tie inside the top 2 mixing utilities, one at rank 4
    checks = tfma_checks.tfma_cross_check_funnel(request, utility, score, k=3, top=2)
    assert not checks["ndcg"].comparable and "mix different utilities" in checks["ndcg"].note
    assert not checks["oracle_recall"].comparable
    assert "score tie straddles rank 3" in checks["oracle_recall"].note
    assert not math.isnan(checks["ndcg"].tfma_value)
