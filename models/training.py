"""Training a scorer with a sample-routing loss, and what it logs to TensorBoard.

`RoutedTrainer` wraps a light or heavy scorer: each step scores a batch of whole requests and
minimises the configured loss (GHCL or a baseline, see losses.make_loss), tracking every loss
term. Two callbacks write what a recommender engineer wants to see in TensorBoard:

- `PerSourceAUC`: after each epoch, the AUC of exposed positives against each negative source
  (EN, RN, PRN, GN) on the eval split, and the mean over the model's contrasts, which early
  stopping watches.
- `GradientConflict`: within a budget of training time, on a fixed probe batch, the cosine similarity
  between the gradients, with respect to the scorer's parameters (all shared by the sources),
  of the per-source losses. The per-source loss of source g is the training loss restricted to
  the positives and the negatives of g, so the same signal is defined for every loss and the
  baselines can be compared with GHCL: negative cosines are the gradient conflict GHCL is meant
  to remove.

Every graph function here is traced without AutoGraph (`tf.function(autograph=False)`, and
`do_not_convert` on the Keras steps): the models and losses branch only on Python values, and
AutoGraph's source-to-source conversion of them, the Keras layers and the optimizer was most of
each trace in a fresh process (benchmarks/trace_cost.py measures it; results/legacy/trace_cost.json).
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import tensorflow as tf
from sklearn import metrics

from hap.data import contract as c
from hap.data.sample_routing import MEAN_AUC, contrast_metric
from hap.models import losses, transformed


def _replicas() -> int:
    """Replicas computing this step together (1 outside a tf.distribute replica context)."""
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


class RoutedTrainer(tf.keras.Model):
    """A scorer trained with a per-request loss; `call` is the scorer's logits."""

    def __init__(self, scorer: tf.keras.Model, loss_fn, **kwargs):
        super().__init__(**kwargs)
        self.scorer = scorer
        self.loss_fn = loss_fn
        self._trackers: dict[str, tf.keras.metrics.Mean] = {}

    def call(self, features, training=False):
        return self.scorer(features, training=training)

    def _terms(self, features, training: bool):
        logits = self.scorer(features, training=training)
        if _replicas() > 1:
            logits, labels, groups, ids, num_requests = gather_replicas(
                tf.distribute.get_replica_context(), logits, features)
        else:
            labels, groups = features[transformed.LABEL], features[transformed.SAMPLE_GROUP]
            ids, num_requests = losses.dense_request_ids(features[transformed.REQUEST_KEY])
        return self.loss_fn(logits, labels, groups, ids, num_requests, update=training)

    def create_step_variables(self, features) -> None:
        """Creates, on a batch `features`, every variable a training step would otherwise create in
        its first trace: the scorer's weights, the optimizer's slots and a Mean per logged term.
        TensorFlow traces a function whose first trace created variables once more (its rule:
        variables are created only on a first call); making them here first costs less than that
        second trace (benchmarks/trace_cost.py)."""
        with self.distribute_strategy.scope():
            names = list(self._terms(features, training=False))
            if self.losses:
                names.append("regularization")
            if getattr(self.loss_fn, "gradient_rule", None):
                names += [f"grad_weight_{g}" for g in self.loss_fn.negative_groups]
            for name in names:
                self._tracker(name)
            self.optimizer.build(self.scorer.trainable_variables)

    def _tracker(self, name: str) -> tf.keras.metrics.Mean:
        if name not in self._trackers:
            self._trackers[name] = tf.keras.metrics.Mean(name)
        return self._trackers[name]

    def _track(self, terms: dict) -> dict:
        for name, value in terms.items():
            self._tracker(name).update_state(value)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    @property
    def metrics(self):
        return list(self._trackers.values())

    def make_train_function(self, force=False):
        """Keras' train function, with the step traced once where Keras would trace it twice.

        Keras writes its multi-step loop (`steps_per_execution` > 1) as `for _ in tf.range(n):
        outputs = step(...)`, and AutoGraph traces that body once more to learn the structure of
        `outputs`, undefined before the loop, and a trace of the step is seconds
        (benchmarks/trace_cost.py). Here the step is one `tf.function`, traced once, whose output
        structure gives the `tf.while_loop` its initial values (zeros): the graph holds one call
        of the step, which Grappler then optimises once (a first step before the loop, the other
        way to define the outputs, puts two copies of the step in the graph and was slower). Keras' `steps_per_execution` variable still bounds the loop, as its
        data handler shortens an epoch's last call through it. Under several replicas, XLA or
        eager running, Keras' own function is used."""
        if self.train_function is not None and not force:
            return self.train_function
        if (self.run_eagerly or self.jit_compile or self._cluster_coordinator is not None
                or self.distribute_strategy.num_replicas_in_sync > 1 or self._steps_per_execution is None):
            return super().make_train_function(force)
        steps = self._steps_per_execution

        @tf.function(autograph=False)
        def one_step(data):
            outputs = self.train_step(data)
            # The step counter moves once the step's outputs exist, as in Keras' own loop.
            with tf.control_dependencies(tf.nest.flatten(outputs)[:1]):
                self._train_counter.assign_add(1)
            return outputs

        def run_step(data):
            return self.distribute_strategy.run(one_step, args=(data,))

        @tf.function(autograph=False, reduce_retracing=True)
        def train_function(iterator):
            # The loop's initial outputs: zeros of the traced step's output structure, so the
            # graph holds one call of the step (the loop body's), not a second one before it.
            traced = one_step.get_concrete_function(iterator.element_spec).structured_outputs
            zeros = tf.nest.map_structure(lambda t: tf.zeros(t.shape, t.dtype), traced)
            _, outputs = tf.while_loop(lambda i, _: i < steps, lambda i, _: (i + 1, run_step(next(iterator))),
                                       (tf.zeros_like(steps), zeros))
            return outputs

        self.train_function = self.train_tf_function = train_function
        return train_function

    @tf.autograph.experimental.do_not_convert
    def train_step(self, features):
        if getattr(self.loss_fn, "gradient_rule", None):
            return self._per_source_step(features)
        with tf.GradientTape() as tape:
            terms = self._terms(features, training=True)
            # Each replica holds the loss of the whole step (see gather_replicas) and the
            # optimizer sums the replicas' gradients: each replica contributes 1/N of it.
            loss = terms["loss"] / _replicas()
            if self.losses:
                # Regularisers and add_loss() terms of the scorer's layers, as tfrs.Model adds
                # them; scaled by 1/N for the same reason as the loss.
                terms["regularization"] = tf.add_n(self.losses)
                loss += tf.nn.scale_regularization_loss(terms["regularization"])
        variables = self.scorer.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return self._track(terms)

    def _per_source_step(self, features):
        """A step of a loss whose harmonising rule combines per-source gradients (GHCL's
        "gradnorm", "pcgrad"; models/losses.py): one persistent tape gives the gradient of the
        shared part (bce_weight * BCE and the regularisers) and one of each source's InfoNCE,
        flattened and densified (embedding gradients arrive as IndexedSlices) into a [G, P]
        stack that `loss_fn.combine_gradients` turns into one update."""
        names = self.loss_fn.negative_groups
        with tf.GradientTape(persistent=True) as tape:
            terms = self._terms(features, training=True)
            shared = self.loss_fn.bce_weight * terms["bce"] / _replicas()
            if self.losses:
                terms["regularization"] = tf.add_n(self.losses)
                shared += tf.nn.scale_regularization_loss(terms["regularization"])
            per_source = [terms[f"infonce_{g}"] / _replicas() for g in names]
        variables = self.scorer.trainable_variables
        zero = tf.UnconnectedGradients.ZERO
        gradients = [tf.convert_to_tensor(g) for g in tape.gradient(shared, variables, unconnected_gradients=zero)]
        stack = tf.stack([flatten(tape.gradient(loss, variables, unconnected_gradients=zero)) for loss in per_source])
        del tape
        combined, weights = self.loss_fn.combine_gradients(stack, tf.stack([terms[f"count_{g}"] for g in names]))
        gradients = [g + part for g, part in zip(gradients, unflatten(combined, variables))]
        self.optimizer.apply_gradients(zip(gradients, variables))
        for i, g in enumerate(names):
            terms[f"grad_weight_{g}"] = weights[i]
        return self._track(terms)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, features):
        return self._track(self._terms(features, training=False))


def flatten(gradients) -> tf.Tensor:
    """One float32 vector of a list of gradients, IndexedSlices densified."""
    return tf.concat([tf.reshape(tf.convert_to_tensor(g, tf.float32), [-1]) for g in gradients], axis=0)


def unflatten(vector, variables) -> list[tf.Tensor]:
    """`vector` (as `flatten` makes it) cut back into tensors of the variables' shapes."""
    sizes = [v.shape.num_elements() for v in variables]
    return [tf.reshape(part, v.shape) for part, v in zip(tf.split(vector, sizes), variables)]


def gather_replicas(context: tf.distribute.ReplicaContext, logits, features):
    """The whole step's batch, gathered from every replica, as the losses' inputs:
    (logits, labels, groups, request_ids, num_requests).

    A per-replica loss would be a mean over that replica's samples, and the replicas' means do
    not average to the step's mean when their batches differ in size, nor would GHCL's
    harmoniser see the same group losses on every replica. Gathering gives every replica the
    loss one device would compute on the step's batch; all_gather's gradient hands each replica
    the part for its own samples. Requests are whole on each replica, so (local request id,
    replica) names a request.
    """
    local_ids, _ = losses.dense_request_ids(features[transformed.REQUEST_KEY])
    request = local_ids * context.num_replicas_in_sync + tf.cast(context.replica_id_in_sync_group, tf.int32)
    # The non-differentiable columns travel together as float32 (exact for these small integers),
    # a dtype every collective implementation gathers.
    side = tf.stack([tf.cast(features[transformed.LABEL], tf.float32), tf.cast(features[transformed.SAMPLE_GROUP], tf.float32),
                     tf.cast(request, tf.float32)], axis=1)
    logits = context.all_gather(logits, axis=0)
    side = context.all_gather(side, axis=0)
    ids, num_requests = losses.dense_request_ids(tf.cast(side[:, 2], tf.int32))
    return logits, side[:, 0], tf.cast(side[:, 1], tf.int32), ids, num_requests


def auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return float("nan")
    labels = np.r_[np.ones(len(positive_scores)), np.zeros(len(negative_scores))]
    return float(metrics.roc_auc_score(labels, np.r_[positive_scores, negative_scores]))


def per_source_auc(scores: np.ndarray, groups: np.ndarray, negative_groups=c.NEGATIVE_GROUPS) -> dict[str, float]:
    """AUC of exposed positives against each negative source, and their mean."""
    positives = scores[groups == transformed.GROUP_INDEX[c.EP]]
    result = {contrast_metric(g): auc(positives, scores[groups == transformed.GROUP_INDEX[g]]) for g in negative_groups}
    result[MEAN_AUC] = float(np.nanmean(list(result.values())))
    return result


LOGITS = "logits"


def predictor(scorer: tf.keras.Model, records):
    """The scorer's logits over batches of `records` as one tf.function, traced once for batches
    of any size: its input signature is the records' element spec (a relaxed-shape retrace would
    trace it twice, the first batch's shape and then any)."""
    return tf.function(lambda features: scorer(features, training=False), autograph=False,
                       input_signature=[records.dataset(1).element_spec])


def score_records(predict, records, requests_per_batch: int = 256) -> np.ndarray:
    """`predict`'s (see `predictor`) logits over a split of request records, streamed, in the
    records' order (the order of `records.columns`)."""
    return records.columns((), requests_per_batch, derived={LOGITS: predict})[LOGITS]


class PerSourceAUC(tf.keras.callbacks.Callback):
    """After each epoch, the AUC of EP against every negative source on the eval records, streamed;
    `auc_mean` (what early stopping watches) is the mean over the model's own `contrasts`: the
    heavy model is not trained to tell positives from PRN or GN, so those do not pick its epoch."""

    def __init__(self, scorer, eval_records, log_dir: str, contrasts=c.NEGATIVE_GROUPS):
        super().__init__()
        self.predict = predictor(scorer, eval_records)
        self.eval_records = eval_records
        self.contrasts = tuple(contrasts)
        self.writer = tf.summary.create_file_writer(f"{log_dir}/per_source_auc")
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        # The sample groups come with the scores, not from a pass of their own over the records.
        columns = self.eval_records.columns((transformed.SAMPLE_GROUP,), derived={LOGITS: self.predict})
        result = per_source_auc(columns[LOGITS], columns[transformed.SAMPLE_GROUP])
        self.seconds += time.perf_counter() - start
        result[MEAN_AUC] = float(np.nanmean([result[contrast_metric(g)] for g in self.contrasts]))
        self.history.append(result)
        with self.writer.as_default(step=epoch):
            for name, value in result.items():
                tf.summary.scalar(name, value)
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in result.items()})


class GradientConflict(tf.keras.callbacks.Callback):
    """Cosines between per-source gradients on a fixed probe batch, sampled within a time budget.

    One tf.function computes the gradient of the loss restricted to the probe's positives and
    one source's negatives, the source chosen by a boolean mask over the probe (a fixed shape),
    so it is traced once, not once per source. A probe runs after a step whenever the time spent
    probing is at most `budget` times the time spent training; the one-off tracing is not counted
    against the budget (it is reported as `trace_seconds`), so the share of training time that
    sampling costs stays near `budget` on any hardware and data size."""

    def __init__(self, scorer, loss_fn, probe: dict, log_dir: str, budget: float = 0.05,
                 negative_groups=c.NEGATIVE_GROUPS):
        super().__init__()
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"the gradient-conflict budget must be in (0, 1], got {budget}")
        self.scorer = scorer
        self.loss_fn = loss_fn
        self.budget = budget
        self.writer = tf.summary.create_file_writer(f"{log_dir}/gradient_conflict")
        self.probe = {k: tf.constant(v) for k, v in probe.items()}
        groups = np.asarray(probe[transformed.SAMPLE_GROUP])
        positives = groups == transformed.GROUP_INDEX[c.EP]
        self.masks = {}
        for g in negative_groups:
            negatives = groups == transformed.GROUP_INDEX[g]
            if positives.any() and negatives.any():
                self.masks[g] = tf.constant(positives | negatives)
        self._masked_gradient = tf.function(self._replica_gradient, autograph=False,
                                             input_signature=[tf.TensorSpec([len(groups)], tf.bool)])
        self.history: list[dict[str, float]] = []
        self.cost = {"probes": 0, "probe_seconds": 0.0, "trace_seconds": 0.0, "train_seconds": 0.0}
        # It reads no logs: without this, Keras copies every step's logs to numpy for its batch hooks.
        self._supports_tf_logs = True
        self._epoch_start_step = 0
        self._step_start = 0.0

    def _gradient(self, keep) -> tf.Tensor:
        batch = {k: tf.boolean_mask(v, keep) for k, v in self.probe.items()}
        with tf.GradientTape() as tape:
            ids, num_requests = losses.dense_request_ids(batch[transformed.REQUEST_KEY])
            logits = self.scorer(batch, training=False)
            loss = self.loss_fn(logits, batch[transformed.LABEL], batch[transformed.SAMPLE_GROUP], ids, num_requests,
                                update=False)["loss"]
        grads = tape.gradient(loss, self.scorer.trainable_variables)
        return flatten([g for g in grads if g is not None])

    def _replica_gradient(self, keep) -> tf.Tensor:
        # Distributed variables are differentiable only in a replica context; every replica
        # computes the same gradient of the probe, so the first replica's is kept.
        strategy = tf.distribute.get_strategy()
        return strategy.experimental_local_results(strategy.run(self._gradient, args=(keep,)))[0]

    def measure(self) -> dict[str, float]:
        grads = {g: self._masked_gradient(mask) for g, mask in self.masks.items()}
        result = {f"cos_{a}_{b}": float(tf.reduce_sum(grads[a] * grads[b]) / (tf.norm(grads[a]) * tf.norm(grads[b]) + 1e-12))
                  for a, b in itertools.combinations(grads, 2)}
        if result:
            result["cos_mean"] = float(np.mean(list(result.values())))
        return result

    def on_epoch_begin(self, epoch, logs=None):
        # Keras calls the batch hooks once per call of its train function (`steps_per_execution`
        # steps), with the epoch's index of the call's last step: the global step follows.
        self._epoch_start_step = epoch * (self.params.get("steps") or 0)

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.cost["train_seconds"] += time.perf_counter() - self._step_start
        if len(self.masks) > 1 and self.cost["probe_seconds"] <= self.budget * self.cost["train_seconds"]:
            start = time.perf_counter()
            result = self.measure()
            spent = time.perf_counter() - start
            self.cost["trace_seconds" if self.cost["probes"] == 0 else "probe_seconds"] += spent
            self.cost["probes"] += 1
            step = self._epoch_start_step + batch
            self.history.append({"step": step, **result})
            with self.writer.as_default(step=step):
                for name, value in result.items():
                    tf.summary.scalar(name, value)
