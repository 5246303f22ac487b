"""The evaluation metrics against TFMA's own, on the same data (used by tests/test_metrics.py).

`tfma_cross_check_auc` and `tfma_cross_check_funnel` run TFMA's metrics with
`tfma.analyze_raw_data` (a Beam pipeline each, a few seconds) and report, metric by metric, both
values and whether the definitions agree on that data (no tie TFMA would break arbitrarily, no
undefined value); the tests assert that the comparable ones are equal. Where and why the
definitions differ is in the docstrings of hap.evaluation.auc_metrics and top_k_metrics.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile

import numpy as np
import pandas as pd
import tensorflow_model_analysis as tfma

from hap.data import contract as c
from hap.evaluation import auc_metrics
from hap.evaluation import metric_base as base
from hap.evaluation import top_k_metrics


@dataclasses.dataclass(frozen=True)
class CrossCheck:
    """A metric computed by hap.evaluation and by TFMA on the same data.

    comparable: whether the two definitions agree on this data (when False, `note` says why and
        `tfma_value` may be NaN because TFMA was not asked, or hold a value that differs by design).
    """

    metric: str
    numpy_value: float
    tfma_value: float
    comparable: bool
    note: str = ""

    @property
    def agrees(self) -> bool:
        return self.comparable and math.isclose(self.numpy_value, self.tfma_value, rel_tol=1e-6, abs_tol=1e-9)


# TFMA's AUC bins predictions into 10,000 buckets over [0, 1]; spacing distinct scores at least
# 2.5 buckets apart keeps each in its own confusion-matrix interval.
_TFMA_AUC_MAX_DISTINCT = 4000


def _run_tfma(frame, metrics_specs, slicing_specs) -> dict[tuple, float]:
    """{(slice key, sub key, metric name): value} from `tfma.analyze_raw_data`."""
    config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key="label", prediction_key="prediction")],
        metrics_specs=metrics_specs, slicing_specs=slicing_specs)
    with tempfile.TemporaryDirectory() as out:
        result = tfma.analyze_raw_data(frame, config, output_path=out)
    values = {}
    for slice_key, by_output in result.slicing_metrics:
        for by_sub_key in by_output.values():
            for sub_key, metrics in by_sub_key.items():
                for name, value in metrics.items():
                    if "doubleValue" in value:
                        values[(tuple(slice_key), sub_key, name)] = float(value["doubleValue"])
    return values


def tfma_cross_check_auc(label, score, group) -> dict[str, CrossCheck]:
    """`auc_by_source` against TFMA's `AUC` sliced by a multivalent "negative source" feature.

    The scores are mapped to dense ranks spaced evenly in (0, 1) (AUC only depends on the
    order, and equal scores stay equal) so that TFMA's bucketed AUC is exact; with more than
    4,000 distinct scores that is impossible and nothing is comparable. Where the AUC is
    undefined here (NaN) TFMA reports 0.0 (a slice with one class: a source without samples
    still has a slice of the EP rows) or no slice at all (no EP and no samples of the source):
    reported as not comparable. The mean is compared with the mean of TFMA's per-source values
    over the sources defined here.
    """
    ours = auc_metrics.auc_by_source(label, score, group)
    label, score, group = base.checked_label(label), base.checked_score(score), base.checked_group(group)
    distinct, dense = np.unique(score, return_inverse=True)
    checks: dict[str, CrossCheck] = {}
    if len(distinct) > _TFMA_AUC_MAX_DISTINCT:
        for name, m in ours.items():
            checks[name] = CrossCheck(name, m.value, float("nan"), False,
                                      f"{len(distinct)} distinct scores exceed TFMA's AUC resolution")
        return checks
    frame = pd.DataFrame({
        "label": label,
        "prediction": (dense.reshape(-1) + 1.0) / (len(distinct) + 1.0),
        "negative_source": [list(c.NEGATIVE_GROUPS) if g == c.EP else [g] for g in group],
    })
    tfma_values = _run_tfma(frame, [tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="AUC")])],
                            [tfma.SlicingSpec(feature_keys=["negative_source"])])
    per_source = []
    for g in c.NEGATIVE_GROUPS:
        name = f"auc_EP_vs_{g}"
        value = tfma_values.get(((("negative_source", g),), "", "auc"), float("nan"))
        if math.isnan(ours[name].value):
            checks[name] = CrossCheck(name, ours[name].value, value, False,
                                      f"undefined here ({ours[name].note}); TFMA reports "
                                      f"{'no slice' if math.isnan(value) else value}")
        else:
            checks[name] = CrossCheck(name, ours[name].value, value, True)
            per_source.append(value)
    mean = float(np.mean(per_source)) if per_source else float("nan")
    checks["auc_mean"] = CrossCheck("auc_mean", ours["auc_mean"].value, mean, bool(per_source),
                                    "mean of TFMA's per-source AUCs over the sources defined here")
    return checks


def _tie_at_cutoff(r: base.Ranking, cutoff: int, requests: np.ndarray) -> bool:
    """Whether, in a request where `requests` is True, a tie group straddles rank `cutoff`."""
    straddles = (r.g_start < cutoff) & (r.g_start + r.g_size > cutoff)
    return bool(np.any(straddles & requests[r.req[r.g_first]]))


def tfma_cross_check_funnel(request, utility, score, k: int = top_k_metrics.FUNNEL_K,
                            top: int = top_k_metrics.FUNNEL_TOP) -> dict[str, CrossCheck]:
    """`ndcg_at_k` and `oracle_recall_at_k` against TFMA's `NDCG` and `Recall(top_k)` with a query key.

    One `analyze_raw_data` run with `query_key` = request, `gain_key` = utility, label = "in the
    oracle top-`top`". Comparable only where the definitions agree on this data:
    - NDCG@K: no tie group of scores reaching into the top K mixes different utilities (TFMA
      breaks such ties by an unspecified order, we take the expectation);
    - oracle Recall@K: every request has >= K candidates (TFMA raises otherwise) and >= `top`
      (so each request with a positive utility has exactly `top` relevant items and TFMA's
      pooled recall equals our mean; all-zero requests get no relevant item, so TFMA ignores
      them as we skip them), and in requests with a positive utility no utility tie straddles
      rank `top` (the relevant set is well defined) and no score tie straddles rank K (TFMA
      picks tied items with np.argpartition). TFMA's Recall is not run when a request has fewer
      than K candidates.
    """
    k, top = base.positive_int("k", k), base.positive_int("top", top)
    ndcg = top_k_metrics.ndcg_at_k(request, utility, score, k)
    recall = top_k_metrics.oracle_recall_at_k(request, utility, score, k, top)
    codes, num_requests, utility, score = top_k_metrics.funnel_inputs(request, utility, score)
    by_score, by_utility = base.rank(codes, num_requests, score), base.rank(codes, num_requests, utility)
    has_gain = top_k_metrics.has_gain(codes, num_requests, utility)
    # Requests without gain have no relevant item: TFMA's pooled recall ignores them, as we do.
    relevant = by_utility.to_input_order(
        ((by_utility.g_start[by_utility.gid] < top) & has_gain[by_utility.req]).astype(np.float64))

    reach_top_k = by_score.g_start < k
    g_util = utility[by_score.order]
    g_min = np.minimum.reduceat(g_util, by_score.g_first) if g_util.size else g_util
    g_max = np.maximum.reduceat(g_util, by_score.g_first) if g_util.size else g_util
    ndcg_ties = int(np.sum(reach_top_k & (by_score.g_size > 1) & (g_min != g_max)))
    ndcg_note = (f"{ndcg_ties} score tie group(s) in the top {k} mix different utilities; "
                 "TFMA breaks them in an unspecified order" if ndcg_ties else "")

    recall_problems = []
    if num_requests and by_score.size.min() < k:
        recall_problems.append(f"a request has {by_score.size.min()} < k={k} candidates (TFMA raises)")
    if num_requests and by_score.size.min() < top:
        recall_problems.append(f"a request has fewer than top={top} candidates")
    if _tie_at_cutoff(by_utility, top, has_gain):
        recall_problems.append(f"a utility tie straddles rank {top}")
    if _tie_at_cutoff(by_score, k, has_gain):
        recall_problems.append(f"a score tie straddles rank {k}")

    frame = pd.DataFrame({"request": np.asarray(request).astype(str), "label": relevant,
                          "prediction": score, "gain": utility})
    metrics = [tfma.MetricConfig(class_name="NDCG", config=f'"gain_key": "gain", "top_k_list": [{k}]')]
    run_recall = not (num_requests and by_score.size.min() < k)
    if run_recall:
        metrics.append(tfma.MetricConfig(class_name="Recall", config=f'"top_k": {k}'))
    values = _run_tfma(frame, [tfma.MetricsSpec(query_key="request", metrics=metrics)], [tfma.SlicingSpec()])
    sub_key = f"topK:{k}"
    return {
        "ndcg": CrossCheck("ndcg", ndcg.value, values.get(((), sub_key, "ndcg"), float("nan")),
                           not ndcg_ties, ndcg_note),
        "oracle_recall": CrossCheck("oracle_recall", recall.value,
                                    values.get(((), sub_key, "recall"), float("nan")),
                                    not recall_problems, "; ".join(recall_problems)),
    }
