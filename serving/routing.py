"""Difficulty-aware routing: which of a request's candidates the heavy model re-scores, and how
the light and heavy scores combine into the final order.

This is the one implementation: the cascade SavedModel's graph (serving/cascade.py), `hap
evaluate` and `hap benchmark` all call it, and the FLOPs of a request (serving/flops.py) count
the candidates it routes. A `RoutingPolicy` is one request's decision, made in the graph from
the light model's logits (and, for `learned`, its router's):

- `top_k`: the K = ceil(fraction N) candidates with the highest light logits (the paper's
  reading of "hard" for pre-ranking: the candidates competing for the places passed on).
  When K is at most the output size `cutoff`, re-ordering them cannot change which candidates
  are passed on, only their order.
- `band`: the K candidates around the output cut-off in light order, ranks [c - ceil(K/2),
  c - ceil(K/2) + K) with c = min(cutoff, N), shifted to stay within [0, N): the candidates
  whose fate is uncertain. The sure keepers above the band stay where the light model put
  them and spend no heavy compute.
- `adaptive`: every candidate whose light logit lies within `margin` of the cut-off's (the
  logit at rank c - 1): many where the light scores crowd around the cut, few where they are
  spread out. `margin` is calibrated (`calibrate_margin`) on light logits of unlabelled
  requests so that the mean routed share meets `fraction`, the mean FLOPs budget.
- `learned`: the K = ceil(fraction N) candidates the light model's difficulty router rates
  hardest (models/difficulty_router.py: fit to Transform's `difficulty`, how far a candidate
  came through the funnel), so the routed set is "hard" as the training data defines it, not
  merely highly scored.

Ties in light logit go to the earlier candidate everywhere (a stable descending sort).

Score combination (`combine`):
- `in_place` (default): the routed candidates are re-ordered by the heavy model among the
  positions they held in light order; every other candidate keeps its light position. The heavy
  model can thus only decide among the candidates it was asked about, and a candidate it never
  saw cannot be pushed down by a routed one it rates poorly.
- `routed_first`: routed candidates come before every unrouted one, ordered by the heavy model
  (the cascade's first rule). For `top_k` both give the same order.

The output `scores` is the final ranking key, (N - final rank) / N in (0, 1]: an order, not a
probability; the light and heavy probabilities are returned beside it.
"""
from __future__ import annotations


import numpy as np
import tensorflow as tf


from hap.serving.policy import (ADAPTIVE, BAND, COMBINATIONS, IN_PLACE, LEARNED, LIGHT_ONLY, POLICIES,  # noqa: F401
                                ROUTED_FIRST, TOP_K, RoutingPolicy, routed_count)


def routed_count_in_graph(n: tf.Tensor, fraction: float) -> tf.Tensor:
    """`routed_count` on a scalar int32 tensor; in float64, as Python computes it, so that both
    agree for every N."""
    k = tf.math.ceil(fraction * tf.cast(n, tf.float64))
    return tf.clip_by_value(tf.cast(k, tf.int32), 1, n)


def light_order(light_logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(rows by descending light logit, each row's rank), ties to the earlier row."""
    order = tf.argsort(light_logits, direction="DESCENDING", stable=True)
    rank = tf.math.invert_permutation(order)
    return order, rank


def _cut_rank(n: tf.Tensor, cutoff: int) -> tf.Tensor:
    return tf.minimum(tf.constant(cutoff, tf.int32), n)


def cutoff_distance(light_logits: tf.Tensor, cutoff: int) -> tf.Tensor:
    """|light logit - the logit at rank min(cutoff, N) - 1|: how far each candidate is from
    the cut in light logits (what the adaptive policy thresholds)."""
    order, _ = light_order(light_logits)
    cut = tf.gather(light_logits, order[_cut_rank(tf.shape(light_logits)[0], cutoff) - 1])
    return tf.abs(light_logits - cut)


def routed_mask(policy: RoutingPolicy, light_logits: tf.Tensor, router_logits: tf.Tensor | None = None) -> tf.Tensor:
    """bool [N]: the candidates of one request that the heavy model re-scores; `router_logits`
    (the light model's difficulty router) only for the `learned` policy."""
    n = tf.shape(light_logits)[0]
    if policy.kind == LIGHT_ONLY:
        return tf.zeros([n], tf.bool)
    if policy.kind == ADAPTIVE:
        return cutoff_distance(light_logits, policy.cutoff) <= policy.margin
    k = routed_count_in_graph(n, policy.fraction)
    if policy.kind == LEARNED:
        if router_logits is None:
            raise ValueError("the learned routing policy needs the light model's router logits")
        _, rank = light_order(router_logits)
        return rank < k
    _, rank = light_order(light_logits)
    if policy.kind == TOP_K:
        start = tf.constant(0, tf.int32)
    else:
        start = tf.clip_by_value(_cut_rank(n, policy.cutoff) - (k + 1) // 2, 0, n - k)
    return tf.logical_and(rank >= start, rank < start + k)


def combine(policy: RoutingPolicy, light_logits: tf.Tensor, heavy_logits: tf.Tensor, routed: tf.Tensor) -> tf.Tensor:
    """float32 [N]: the final ranking key, (N - final rank) / N; `heavy_logits` is read only
    where `routed`."""
    n = tf.shape(light_logits)[0]
    order, rank = light_order(light_logits)
    routed_rows = tf.cast(tf.where(routed)[:, 0], tf.int32)
    by_heavy = tf.gather(routed_rows, tf.argsort(tf.gather(heavy_logits, routed_rows), direction="DESCENDING",
                                                 stable=True))
    if policy.combine == IN_PLACE:
        slots = tf.sort(tf.gather(rank, routed_rows))
    else:
        # The routed take the first places; the unrouted follow in light order.
        slots = tf.range(tf.size(routed_rows))
        unrouted_in_order = tf.cast(tf.logical_not(tf.gather(routed, order)), tf.int32)
        rank = tf.gather(tf.size(routed_rows) + tf.math.cumsum(unrouted_in_order, exclusive=True), rank)
    final_rank = tf.tensor_scatter_nd_update(rank, by_heavy[:, tf.newaxis], slots)
    return tf.cast(n - final_rank, tf.float32) / tf.cast(n, tf.float32)


def route_request(policy: RoutingPolicy, light_logits, heavy_logits, router_logits=None) -> tuple[tf.Tensor, tf.Tensor]:
    """(final key [N], routed [N]) of one request whose heavy logits are known for every
    candidate, as the benchmark and evaluation have them; the cascade graph computes the heavy
    model on the routed rows only and combines them the same way."""
    light_logits = tf.convert_to_tensor(light_logits, tf.float32)
    heavy_logits = tf.convert_to_tensor(heavy_logits, tf.float32)
    routed = routed_mask(policy, light_logits, router_logits)
    return combine(policy, light_logits, heavy_logits, routed), routed


def route_requests(policy: RoutingPolicy, request, light_logits, heavy_logits,
                   router_logits=None) -> tuple[np.ndarray, np.ndarray]:
    """`route_request` over many requests at once (`request`: each row's request id): the final
    keys and routed flags of every row, in the rows' order."""
    light_logits = np.asarray(light_logits, np.float32)
    heavy_logits = np.asarray(heavy_logits, np.float32)
    # Any policy but `learned` ignores the router: the light logits stand in for it.
    router_logits = light_logits if router_logits is None else np.asarray(router_logits, np.float32)
    keys, routed = np.empty(len(light_logits), np.float32), np.zeros(len(light_logits), bool)
    route = tf.function(lambda l, h, r: route_request(policy, l, h, r), autograph=False,
                        input_signature=[tf.TensorSpec([None], tf.float32)] * 3)
    for rows in rows_by_request(request):
        k, r = route(light_logits[rows], heavy_logits[rows], router_logits[rows])
        keys[rows], routed[rows] = k.numpy(), r.numpy()
    return keys, routed


def rows_by_request(request) -> list[np.ndarray]:
    """Each request's row indices, in row order, requests in order of their ids."""
    codes = np.unique(np.asarray(request), return_inverse=True)[1].reshape(-1)
    return np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])


def calibrate_margin(light_logits_by_request: list, fraction: float, cutoff: int) -> float:
    """The adaptive policy's margin whose mean routed share over these requests is closest to
    `fraction` without exceeding it (each request weighs the same, as the budget is per request).
    Uses no labels: any unlabelled requests of the serving distribution will do."""
    distances = [cutoff_distance(tf.constant(np.asarray(l, np.float32)), cutoff).numpy()
                 for l in light_logits_by_request]
    if not distances:
        raise ValueError("calibrate_margin needs at least one request")
    values = np.concatenate(distances)
    weights = np.concatenate([np.full(len(d), 1.0 / (len(d) * len(distances))) for d in distances])
    order = np.argsort(values, kind="stable")
    values, share = values[order], np.cumsum(weights[order])
    # A margin routes every distance <= it: only the last of equal distances is a valid stop.
    last_of_value = np.append(values[1:] != values[:-1], True)
    within = np.flatnonzero(last_of_value & (share <= fraction + 1e-12))
    return float(values[within[-1]]) if within.size else 0.0


def mean_routed_share(policy: RoutingPolicy, light_logits_by_request: list) -> float:
    """The policy's mean share of routed candidates per request."""
    return float(np.mean([routed_mask(policy, tf.constant(np.asarray(l, np.float32))).numpy().mean()
                          for l in light_logits_by_request]))
