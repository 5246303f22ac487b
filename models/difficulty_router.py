"""The learned difficulty router: which candidates are hard in the sense the training data defines.

Transform's `difficulty` (models/preprocessing.difficulty) rates each training sample by how far
it came through the funnel: 1 exposed, (0.5, 1) ranking rejects by rank, (0.25, 0.5) pre-ranking
rejects by position, 0 random pool items. The router is the light model's linear head over its
towers' output (`LightModel.router_logits`), fit to `difficulty` as a soft label by sigmoid
cross-entropy once the light model has trained, with the towers frozen: the light scores do not
change. serving/routing.py's `learned` policy then sends the heavy model the K candidates the
router rates hardest, the ones most like those the later stages weighed, instead of the K with
the highest light scores.

The fit is convex (a logistic regression on frozen features), so its settings only need to
reach the optimum, not to be tuned per dataset: `passes` passes of Adam over at most
`max_requests` training requests (a head of 3D + 1 weights; 5,000 requests are about 160,000
samples at the contract's request sizes).
"""
from __future__ import annotations

import dataclasses
import time

import tensorflow as tf

from hap.models import transformed

DEFAULT_PASSES = 3
DEFAULT_LEARNING_RATE = 1e-2


def router_bce(scorer, batch) -> tf.Tensor:
    """Mean sigmoid cross-entropy of the router's logits against the batch's `difficulty`."""
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(batch[transformed.DIFFICULTY], tf.float32), logits=scorer.router_logits(batch)))


def train_router(scorer, records, requests_per_batch: int, max_requests: int, log_dir: str,
                 passes: int = DEFAULT_PASSES, learning_rate: float = DEFAULT_LEARNING_RATE,
                 strategy: tf.distribute.Strategy | None = None) -> dict:
    """Fits `scorer.router` (a light model's) on `records`; returns {"router_bce": the last pass's
    mean loss, "router_seconds"} and logs the loss per pass to `log_dir`/router.

    Every replica reads the same requests and computes the same gradient; their sum, scaled by
    1 / replicas, is one replica's, so the result does not depend on the hardware."""
    strategy = strategy or tf.distribute.get_strategy()
    subset = dataclasses.replace(records, requests=min(records.requests, max_requests))
    scorer.router.trainable = True
    variables = scorer.router.trainable_variables
    with strategy.scope():
        optimizer = tf.keras.optimizers.Adam(learning_rate)
    replicas = strategy.num_replicas_in_sync

    def replica_step(batch):
        with tf.GradientTape() as tape:
            loss = router_bce(scorer, batch)
            scaled = loss / replicas
        optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return loss

    step = tf.function(lambda batch: strategy.experimental_local_results(strategy.run(replica_step, args=(batch,)))[0],
                       reduce_retracing=True, autograph=False)
    writer = tf.summary.create_file_writer(f"{log_dir}/router")
    start, mean = time.perf_counter(), float("nan")
    for p in range(passes):
        total, steps = 0.0, 0
        for batch in subset.dataset(requests_per_batch, shuffle_requests=min(subset.requests, 1_000), seed=p):
            total += float(step(batch))
            steps += 1
        mean = total / max(steps, 1)
        with writer.as_default(step=p + 1):
            tf.summary.scalar("router_bce", mean)
    return {"router_bce": mean, "router_seconds": time.perf_counter() - start}
