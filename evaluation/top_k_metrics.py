"""Top-K metrics of pre-ranking scores: what each request's top K by score holds.

| function | on | what |
|---|---|---|
| `hitrate_at_k`, `recall_at_k` | logged samples | clicks within each request's top K by score |
| `oracle_recall_at_k` | funnel | share of the oracle top-`top` items that the score puts in its top K |
| `ndcg_at_k` | funnel | NDCG@K with the oracle utility as gain |

Inputs, results and the tie rule are those of `metric_base`; here a tie group straddling the
cut-off contributes fractionally (each function's docstring gives the exact definition).

TFMA (0.47.1, checked against its `metrics/ndcg.py`, `metric_util.top_k_indices` and
`evaluators/metrics_plots_and_validations_evaluator._GroupByQueryKey`):

- NDCG@K: `NDCG` with `query_key` and `gain_key`, linear gains, log2 discount, IDCG over the
  top min(K, n), requests whose gains are all <= 0 weighted 0, then an unweighted mean over
  requests: the same definition as `ndcg_at_k`, except ties: TFMA sorts a request with
  `np.argsort(predictions)[::-1]` over its examples in the order Beam's GroupByKey delivers
  them, so a tie is broken by an unspecified order.
- oracle Recall@K: `Recall(top_k=K)` with `query_key` and label = "in the oracle top-N". It
  pools true positives over requests (a micro average, equal to our per-request mean only when
  every request has the same number of relevant items, which holds here: N each), raises on a
  request with fewer than K candidates, and picks tied items at the cut-off with
  `np.argpartition`, an unspecified order.

Not in TFMA: HitRate@K (`MinLabelPosition` averages the first click's position instead), and
Recall@K on logged samples as a per-request mean (`Recall(top_k)` is the micro average, a
different number when requests have different click counts).
"""
from __future__ import annotations

import math

import numpy as np

from hap.evaluation import metric_base as base
from hap.evaluation.metric_base import MetricResult

# The full funnel's cuts: pre-ranking passes 100 to 200 of a request's ~1000 retrieved candidates
# on to ranking (the contract's pre-ranking keeps 200), and should keep the 10 the user wants most
# among them. FUNNEL_K is the first, the default of the metric functions.
FUNNEL_KS, FUNNEL_TOP = (100, 200), 10
FUNNEL_K = FUNNEL_KS[0]


# ---------------------------------------------------------------------------------------------
# Clicks on logged samples


def _clicked_requests(request, label, score, k):
    k = base.positive_int("k", k)
    codes, num_requests = base.request_codes(request)
    label, score = base.checked_label(label), base.checked_score(score)
    base.same_length(request=codes, label=label, score=score)
    r = base.rank(codes, num_requests, score)
    clicks = np.bincount(codes, weights=label, minlength=num_requests)
    return k, r, label[r.order].astype(np.float64), clicks


def _top_k_result(values: np.ndarray, clicks: np.ndarray, size: np.ndarray) -> MetricResult:
    has = clicks > 0
    excluded = int(np.sum(~has))
    note = f"{excluded} request(s) without clicks excluded" if excluded else ""
    if not has.any():
        note = (note + "; " if note else "") + "no request has a click"
        return MetricResult(float("nan"), 0, 0, excluded, note)
    return MetricResult(float(np.mean(values[has])), int(has.sum()), int(size[has].sum()), excluded, note)


def hitrate_at_k(request, label, score, k: int) -> MetricResult:
    """HitRate@K: share of requests with at least one click among their top K by score.

    Within each request, its logged samples (whatever groups are passed) are ranked by score,
    highest first; a request with fewer than K samples has all of them in its top K. Requests
    without a click are excluded (counted in `excluded_requests`); the value is the unweighted
    mean over the others.

    Ties: the expected value over a uniformly random order within each group of equal scores.
    A request scores 1 if a click ranks strictly inside the top K whatever the tie order (its
    tie group ends at rank <= K); otherwise, if the tie group straddling the cut-off (ranks
    s+1 .. s+m with s < K < s+m) holds c clicks and t = K - s of its m members fall in the top
    K, it scores P(at least one click among t of m) = 1 - C(m-c, t) / C(m, t); else 0.
    """
    k, r, y, clicks = _clicked_requests(request, label, score, k)
    g_clicks = np.add.reduceat(y, r.g_first) if y.size else np.zeros(0)
    g_end = r.g_start + r.g_size
    g_req = r.req[r.g_first]
    hit = np.zeros(len(r.size))
    np.maximum.at(hit, g_req, ((g_end <= k) & (g_clicks > 0)).astype(np.float64))
    straddle = np.flatnonzero((r.g_start < k) & (g_end > k) & (g_clicks > 0))
    for gi in straddle:
        req = g_req[gi]
        if hit[req] == 1.0:
            continue
        m, cl, t = int(r.g_size[gi]), int(g_clicks[gi]), int(k - r.g_start[gi])
        hit[req] = 1.0 - math.comb(m - cl, t) / math.comb(m, t)
    return _top_k_result(hit, clicks, r.size)


def recall_at_k(request, label, score, k: int) -> MetricResult:
    """Recall@K: clicked samples among a request's top K by score / its clicked samples.

    Ranking as in `hitrate_at_k`; averaged (unweighted) over requests with at least one click,
    the others excluded and counted in `excluded_requests`.

    Ties: the expected value over a uniformly random order within each group of equal scores:
    a clicked sample in a tie group of m members starting at rank s+1 counts
    clip(K - s, 0, m) / m, i.e. the tie group straddling the cut-off counts fractionally.
    """
    k, r, y, clicks = _clicked_requests(request, label, score, k)
    in_top = np.bincount(r.req, weights=y * r.in_top_fraction(k), minlength=len(r.size))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = in_top / clicks
    return _top_k_result(values, clicks, r.size)


# ---------------------------------------------------------------------------------------------
# The oracle's utility on the full funnel


def funnel_inputs(request, utility, score) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """The checked inputs of a funnel metric: request codes, number of requests, utility, score."""
    codes, num_requests = base.request_codes(request)
    utility, score = base.checked_utility(utility), base.checked_score(score)
    base.same_length(request=codes, utility=utility, score=score)
    return codes, num_requests, utility, score


def has_gain(codes: np.ndarray, num_requests: int, utility: np.ndarray) -> np.ndarray:
    """Per request: whether some candidate has a positive utility."""
    best = np.zeros(num_requests)
    np.maximum.at(best, codes, utility)
    return best > 0


def oracle_recall_at_k(request, utility, score, k: int = FUNNEL_K, top: int = FUNNEL_TOP) -> MetricResult:
    """Oracle Recall@K: share of each request's oracle top-`top` items found in its top K by score.

    Per request r with n_r candidates: R_r = the min(top, n_r) candidates with the highest
    oracle utility, S_r = the min(K, n_r) candidates with the highest score;
    recall_r = |R_r intersect S_r| / |R_r|, averaged (unweighted) over all requests.

    Requests whose utilities are all zero have no oracle preference (and NDCG skips them too):
    they are skipped and counted in `excluded_requests`.

    Ties, in utility (who is in R_r) and in score (who is in S_r): the expected value over
    uniformly random orders within tie groups, drawn independently, so a candidate counts
    P(in R_r) * P(in S_r), each P = clip(cut-off - s, 0, m) / m for its tie group of m members
    starting at rank s+1 (e.g. a utility tie straddling rank `top` makes each of its members
    fractionally relevant).
    """
    k, top = base.positive_int("k", k), base.positive_int("top", top)
    codes, num_requests, utility, score = funnel_inputs(request, utility, score)
    by_score = base.rank(codes, num_requests, score)
    by_utility = base.rank(codes, num_requests, utility)
    in_top_k = by_score.to_input_order(by_score.in_top_fraction(k))
    relevant = by_utility.to_input_order(by_utility.in_top_fraction(top))
    found = np.bincount(codes, weights=relevant * in_top_k, minlength=num_requests)
    wanted = np.bincount(codes, weights=relevant, minlength=num_requests)
    ok = has_gain(codes, num_requests, utility)
    excluded = int(np.sum(~ok))
    notes = [f"{excluded} request(s) with all-zero utility skipped"] if excluded else []
    if not ok.any():
        notes.append("no request has a positive utility")
        return MetricResult(float("nan"), 0, 0, excluded, "; ".join(notes))
    return MetricResult(float(np.mean(found[ok] / wanted[ok])), int(ok.sum()), int(by_score.size[ok].sum()),
                        excluded, "; ".join(notes))


def ndcg_at_k(request, utility, score, k: int = FUNNEL_K) -> MetricResult:
    """NDCG@K with the oracle utility as gain.

    Per request r, candidates ranked by score, highest first (rank i = 1, 2, ...):
    DCG@K_r = sum_{i <= K} utility_(i) / log2(i + 1)  (linear gain, as TFMA's NDCG);
    IDCG@K_r = the same sum over the candidates sorted by utility, so over the top min(K, n_r);
    NDCG@K_r = DCG@K_r / IDCG@K_r, averaged (unweighted) over requests. Requests whose gains are
    all zero have IDCG = 0: they are skipped and counted in `excluded_requests`.

    Ties: DCG is the expected value over a uniformly random order within each group of equal
    scores: a tie group occupying ranks s+1 .. s+m contributes its mean utility times the sum of
    the discounts of those of its ranks that are <= K. (TFMA breaks the tie by an unspecified
    order instead; see the module docstring.)
    """
    k = base.positive_int("k", k)
    codes, num_requests, utility, score = funnel_inputs(request, utility, score)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    cum = np.concatenate([[0.0], np.cumsum(discount)])
    r = base.rank(codes, num_requests, score)
    start, size = r.g_start[r.gid], r.g_size[r.gid]
    expected_discount = (cum[np.minimum(start + size, k)] - cum[np.minimum(start, k)]) / size
    dcg = np.bincount(r.req, weights=utility[r.order] * expected_discount, minlength=num_requests)
    ideal = base.rank(codes, num_requests, utility)
    rank = np.arange(len(codes)) - np.concatenate([[0], np.cumsum(ideal.size)[:-1]])[ideal.req]
    ideal_discount = np.where(rank < k, 1.0 / np.log2(np.minimum(rank, k) + 2.0), 0.0)
    idcg = np.bincount(ideal.req, weights=utility[ideal.order] * ideal_discount, minlength=num_requests)
    ok = idcg > 0
    excluded = int(np.sum(~ok))
    notes = [f"{excluded} request(s) with all-zero gains skipped"] if excluded else []
    if not ok.any():
        notes.append("no request has a positive gain")
        return MetricResult(float("nan"), 0, 0, excluded, "; ".join(notes))
    return MetricResult(float(np.mean(dcg[ok] / idcg[ok])), int(ok.sum()), int(r.size[ok].sum()), excluded,
                        "; ".join(notes))
