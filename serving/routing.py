"""Difficulty-aware routing: which of a request's candidates the heavy model re-scores, and how
the light and heavy scores combine into the final order.

This is the one implementation: the cascade SavedModel's graph (serving/cascade.py), `hap
evaluate` and `hap benchmark` all call it, and the FLOPs of a request (serving/flops.py) count
the K it routes.

Policy (the paper's "hard ones" for pre-ranking): the K = ceil(route_fraction * N) candidates
with the highest light scores, K at least 1 and at most N. They compete for the places passed on
to ranking, where the light model's errors cost most, while a candidate far below the cut is
dropped whatever its exact score. Ties in light score go to the earlier candidate.

Score combination: a routed candidate's key is 1 + its heavy probability, an unrouted one keeps
its light probability, so routed candidates come first, ordered by the heavy model (a ranking
key in [0, 2), not a probability).
"""
from __future__ import annotations

import math

import tensorflow as tf


def routed_count(n: int, route_fraction: float) -> int:
    """K for a request of N candidates."""
    return min(max(math.ceil(route_fraction * n), 1), n)


def routed_count_in_graph(n: tf.Tensor, route_fraction: float) -> tf.Tensor:
    """`routed_count` on a scalar int32 tensor; in float64, as Python computes it, so that both
    agree for every N."""
    k = tf.math.ceil(route_fraction * tf.cast(n, tf.float64))
    return tf.clip_by_value(tf.cast(k, tf.int32), 1, n)


def routed_rows(light_scores: tf.Tensor, route_fraction: float) -> tf.Tensor:
    """int32 [K]: the rows the heavy model re-scores, highest light score first."""
    k = routed_count_in_graph(tf.shape(light_scores)[0], route_fraction)
    return tf.math.top_k(light_scores, k).indices


def final_scores(light_probs: tf.Tensor, heavy_probs: tf.Tensor, routed: tf.Tensor) -> tf.Tensor:
    """The ranking key of each candidate; `heavy_probs` is read only where `routed`."""
    return tf.where(routed, 1.0 + heavy_probs, light_probs)


def route_request(light_probs, heavy_probs, route_fraction: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(final scores [N], routed [N]) of one request whose heavy probabilities are known for
    every candidate, as the benchmark and evaluation have them; the cascade graph computes the
    heavy model on the routed rows only and combines them the same way."""
    light_probs = tf.convert_to_tensor(light_probs)
    rows = routed_rows(light_probs, route_fraction)
    routed = tf.scatter_nd(rows[:, tf.newaxis], tf.ones_like(rows, tf.bool), tf.shape(light_probs))
    return final_scores(light_probs, tf.convert_to_tensor(heavy_probs, light_probs.dtype), routed), routed
