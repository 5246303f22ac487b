"""Floating-point operations of the cascade, counted from the models' graphs.

TensorFlow's graph profiler counts the float operations of every op whose shapes are static
(matrix products, element-wise arithmetic); lookups and gathers count zero. The cascade's own
graph has data-dependent shapes (K depends on N, sparse inputs), so each part is traced on its
own at fixed batch sizes: the light user tower for one user, the light item tower and head per
candidate, the heavy model per candidate. Every part is linear in its batch, so two batch sizes
give its per-row cost, and a request of N candidates with K routed costs

    light_user + N * light_per_candidate + K * heavy_per_candidate

against N * heavy_per_candidate for the heavy model on all N.
"""
from __future__ import annotations


import tensorflow as tf

from hap.models import transformed


def graph_flops(fn, input_signature: list) -> int:
    graph = tf.function(fn, autograph=False).get_concrete_function(*input_signature).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def _per_row(fn, signature_at) -> int:
    """FLOPs of fn per batch row, from its counts at batch 1 and 2."""
    return graph_flops(fn, signature_at(2)) - graph_flops(fn, signature_at(1))


def model_flops(light, heavy) -> dict:
    """Per-part FLOPs of a light and a heavy model (Keras models with a `model_inputs`)."""
    return {**light_flops(light), "heavy_per_candidate": heavy_flops(heavy)}


def light_flops(light) -> dict:
    """The light model's FLOPs once per request (user tower) and per candidate."""
    user_features = light.model_inputs.user_side
    item_features = light.model_inputs.item_side
    width = light.user_embedding({k: tf.zeros(s.shape, s.dtype) for k, s in
                                  transformed.tensor_specs(user_features, 1).items()}).shape[-1]
    light_user = graph_flops(light.user_embedding, [transformed.tensor_specs(user_features, 1)])
    light_item = _per_row(
        lambda items, u: light.score_from_embeddings(u, light.item_embedding(items)),
        lambda b: [transformed.tensor_specs(item_features, b), tf.TensorSpec([1, width], tf.float32)])
    return {"light_user": light_user, "light_per_candidate": light_item}


def heavy_flops(heavy) -> int:
    """The heavy model's FLOPs per candidate."""
    return _per_row(lambda f: heavy(f, training=False),
                    lambda b: [transformed.tensor_specs(heavy.model_inputs.all_features, b)])


def request_flops(parts: dict, n: int, k: int) -> dict:
    """FLOPs of one request of n candidates: the cascade with k routed, and the heavy model on all."""
    cascade = parts["light_user"] + n * parts["light_per_candidate"] + k * parts["heavy_per_candidate"]
    return {"cascade": cascade, "light_only": parts["light_user"] + n * parts["light_per_candidate"],
            "heavy_all": n * parts["heavy_per_candidate"]}
