"""AUCs of pre-ranking scores: how well they order positives above negatives.

| function | on | what |
|---|---|---|
| `auc_by_source` | logged samples | AUC of EP against each negative source (EN, RN, PRN, GN) and their mean |
| `gauc` | exposed samples | impression-weighted mean of per-request AUC |

Inputs, results and the tie rule are those of `metric_base`; here a tied positive/negative pair
counts 1/2. Each function's docstring gives the exact definition.

TFMA (0.47.1, checked against its `metrics/confusion_matrix_metrics.py`). The per-source AUC is
TFMA's `AUC` on a multivalent slice feature (an EP row belongs to the slices EN, RN, PRN and GN,
a negative row to its own). TFMA's AUC is a Riemann sum over 10,000 buckets of predictions in
[0, 1] (outside values are clipped into the edge buckets), so it equals the exact pairwise AUC,
ties included, only when every distinct score has its own bucket; a slice with one class
reports 0.0 where the AUC is undefined. GAUC is not in TFMA (no per-query AUC).
"""
from __future__ import annotations

import math

import numpy as np

from hap.data import contract as c
from hap.data.sample_routing import MEAN_AUC, contrast_metric
from hap.evaluation import metric_base as base
from hap.evaluation.metric_base import MetricResult

EXPOSED_GROUPS = (c.EP, c.EN)


def _per_request_auc(codes: np.ndarray, num_requests: int, label: np.ndarray, score: np.ndarray):
    """Per request: AUC (NaN without both classes), positives, negatives.

    AUC = (sum of the positives' ascending mid-ranks - P (P + 1) / 2) / (P N), the Mann-Whitney
    form of P(positive scores above negative) + 1/2 P(tie).
    """
    r = base.rank(codes, num_requests, score)
    y = label[r.order].astype(np.float64)
    # Mean 0-based descending rank of the tie group, turned into a 1-based ascending rank.
    mid_desc = r.g_start[r.gid] + (r.g_size[r.gid] - 1) / 2.0
    asc_rank = r.size[r.req] - mid_desc
    pos = np.bincount(r.req, weights=y, minlength=num_requests)
    neg = r.size - pos
    rank_sum = np.bincount(r.req, weights=y * asc_rank, minlength=num_requests)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)
    auc[(pos == 0) | (neg == 0)] = np.nan
    return auc, pos.astype(np.int64), neg.astype(np.int64)


def auc_by_source(label, score, group) -> dict[str, MetricResult]:
    """AUC of exposed positives against each negative source, and their mean.

    For each negative group g in (EN, RN, PRN, GN): the samples of group EP (positives) and g
    (negatives) of the whole input, pooled across requests;
    AUC_g = P(score of a random EP sample > score of a random g sample)
            + 1/2 P(the two scores are equal),
    computed exactly (no binning) over all EP x g pairs. `label` must be 1 exactly on EP samples
    (the contract: clicks only on exposures); it is checked, the groups decide.

    Returns keys "auc_EP_vs_EN", "auc_EP_vs_RN", "auc_EP_vs_PRN", "auc_EP_vs_GN" and "auc_mean"
    (the unweighted mean of the defined per-source AUCs). A per-source AUC is NaN when there are
    no EP samples or no samples of that source; it is then left out of the mean, and the mean's
    note names it with the reason. `requests` is None (pooled), `samples` = EP + g samples.
    """
    label, score, group = base.checked_label(label), base.checked_score(score), base.checked_group(group)
    base.same_length(label=label, score=score, group=group)
    base.check_labels_match_groups(label, group)
    num_positives = int(np.sum(group == c.EP))
    result: dict[str, MetricResult] = {}
    excluded: list[str] = []
    for g in c.NEGATIVE_GROUPS:
        name = contrast_metric(g)
        keep = (group == c.EP) | (group == g)
        num_negatives = int(np.sum(group == g))
        reasons = [f"no {s} samples" for s, n in ((c.EP, num_positives), (g, num_negatives)) if n == 0]
        if reasons:
            note = " and ".join(reasons)
            result[name] = MetricResult(float("nan"), None, num_positives + num_negatives, note=note)
            excluded.append(f"{name} ({note})")
            continue
        auc, _, _ = _per_request_auc(np.zeros(int(keep.sum()), np.int64), 1, label[keep], score[keep])
        result[name] = MetricResult(float(auc[0]), None, num_positives + num_negatives)
    defined = [g for g in c.NEGATIVE_GROUPS if not math.isnan(result[contrast_metric(g)].value)]
    mean = float(np.mean([result[contrast_metric(g)].value for g in defined])) if defined else float("nan")
    samples = (num_positives + int(np.isin(group, defined).sum())) if defined else 0
    note = ("excluded from the mean: " + "; ".join(excluded)) if excluded else ""
    result[MEAN_AUC] = MetricResult(mean, None, samples, note=note)
    return result


def gauc(request, label, score, group=None) -> MetricResult:
    """GAUC: impression-weighted mean of per-request AUC over exposed samples.

    GAUC = sum_r n_r AUC_r / sum_r n_r over the requests r that have at least one positive
    (label 1) and one negative (label 0), where n_r is the number of samples of r that enter
    AUC_r (its impressions: the common definition weights a request by its sample count) and
    AUC_r = P(positive of r scores above negative of r) + 1/2 P(tie), exact, over all pairs.

    Pass exposed samples only (EP and EN, label = click), or pass `group` too and the samples
    of other groups are dropped first (a request left without samples is then not counted at
    all). Requests with only positives or only negatives have no AUC: they are skipped and
    counted in `excluded_requests`. NaN when no request qualifies.
    `requests` = requests averaged over, `samples` = sum of their n_r.
    """
    codes, num_requests = base.request_codes(request)
    label, score = base.checked_label(label), base.checked_score(score)
    arrays = dict(request=codes, label=label, score=score)
    if group is not None:
        group = base.checked_group(group)
        arrays["group"] = group
    base.same_length(**arrays)
    if group is not None:
        base.check_labels_match_groups(label, group)
        keep = np.isin(group, EXPOSED_GROUPS)
        _, codes = np.unique(codes[keep], return_inverse=True)
        codes, label, score = codes.reshape(-1), label[keep], score[keep]
        num_requests = int(codes.max()) + 1 if codes.size else 0
    auc, pos, neg = _per_request_auc(codes, num_requests, label, score)
    ok = ~np.isnan(auc)
    weights = (pos + neg)[ok]
    only_pos, only_neg = int(np.sum(neg[~ok] == 0)), int(np.sum(pos[~ok] == 0))
    notes = []
    if only_pos:
        notes.append(f"{only_pos} request(s) with only positives skipped")
    if only_neg:
        notes.append(f"{only_neg} request(s) with only negatives skipped")
    if not ok.any():
        notes.append("no request has both a positive and a negative")
    value = float(np.sum(weights * auc[ok]) / np.sum(weights)) if ok.any() else float("nan")
    return MetricResult(value, int(ok.sum()), int(weights.sum()), int((~ok).sum()), "; ".join(notes))
