"""Sample-routing losses: gradient-harmonised contrastive learning (GHCL) and its baselines.

Every loss reads the same flat [B] tensors of a batch of whole requests: `logits` (float32),
`labels` (float32 click), `groups` (int, an index into `contract.SAMPLE_GROUPS`: 0 EP, 1 EN,
2 RN, 3 PRN, 4 GN), `request_ids` (int32, dense 0..R-1, see `dense_request_ids`) and
`num_requests` R (inferred as max(request_ids) + 1 when None). Group arguments accept a group
name ("EN") or its index. Positives are the EP samples.

GHCL keeps one contrastive group per negative source: each exposed positive of a request is
contrasted, in its own softmax, with that request's negatives of one source only, so easy random
negatives cannot hide the hard exposed and ranking ones in a pooled denominator:

    total = bce_weight * BCE(the `bce_on` samples) + sum_g w_g * InfoNCE_g

Harmonising rule (`LossHarmonizer`): each group g keeps an exponential moving average of its
InfoNCE value, ema_g <- momentum * ema_g + (1 - momentum) * L_g (momentum 0.99 by default),
initialised to the first value the group shows. For the groups active in a step (at least one
contributing positive), w_g = stop_gradient(mean_k(ema_k) / ema_g), the mean taken over the
active groups; inactive groups get w_g = 0 and keep their EMA. Each term is thus rescaled to the
common loss scale (w_g * ema_g is the same for all active groups), so a large-loss source does
not drown the others in the shared gradient, nor does a small-loss one vanish from it, while the
total keeps its scale (sum_g w_g * ema_g = sum_g ema_g). The weights carry no gradient: they rescale the
per-group gradients, they are not a quantity the model can reduce.

Which samples each model's loss reads comes from its `SampleRouting` (data/sample_routing.py,
`make_loss`): GHCL has one InfoNCE group per contrast and BCE on the `bce_on` groups. The
baselines read the same samples: `mixed_bce` is BCE alone over every group the model trains on;
`pooled_infonce` is GHCL's BCE plus one softmax of each positive against all of its request's
negatives of the contrast groups, without harmonising, so it differs from GHCL only in pooling
the sources.

The temperature divides the logits in the InfoNCE terms only; BCE sees the raw logits, which
therefore stay calibrated click logits. Default 1.0: on the default data (3 seeds, light model,
as `hap benchmark` variant c trains it) temperature 0.1 made GHCL unstable across seeds and worse than
mixed_bce (mean per-source AUC 0.815 +- 0.014 against 0.834 +- 0.001), while 1.0 gave
0.838 +- 0.002.
"""
from __future__ import annotations

import tensorflow as tf

from hap.data import contract as c
from hap.data.sample_routing import SampleRouting
from hap.models import transformed

LOSS_NAMES = ("ghcl", "mixed_bce", "pooled_infonce")
DEFAULT_TEMPERATURE = 1.0
DEFAULT_MOMENTUM = 0.99
# A perfectly separated group's loss can underflow to 0; the floor keeps its weight finite.
_MIN_EMA = 1e-8


def _group_name(group) -> str:
    return group if isinstance(group, str) else c.SAMPLE_GROUPS[int(group)]


def in_groups(groups, names) -> tf.Tensor:
    """bool [B]: whether each sample belongs to one of the named groups."""
    indices = tf.constant([transformed.GROUP_INDEX[_group_name(g)] for g in names], tf.int32)
    return tf.reduce_any(tf.cast(groups, tf.int32)[:, None] == indices[None, :], axis=1)


def dense_request_ids(request_keys) -> tuple[tf.Tensor, tf.Tensor]:
    """Maps [B] request keys (string or int) to (int32 dense ids 0..R-1, R)."""
    keys, ids = tf.unique(request_keys, out_idx=tf.int32)
    return ids, tf.size(keys)


def _num_requests(request_ids, num_requests) -> tf.Tensor:
    if num_requests is not None:
        return tf.cast(num_requests, tf.int32)
    return tf.maximum(tf.reduce_max(tf.cast(request_ids, tf.int32)) + 1, 0)


def bce(logits, labels, mask=None) -> tf.Tensor:
    """Mean sigmoid cross-entropy over the masked samples; 0 when none is selected."""
    xent = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.float32), logits=tf.cast(logits, tf.float32))
    if mask is not None:
        xent = tf.boolean_mask(xent, tf.cast(mask, tf.bool))
    return tf.math.divide_no_nan(tf.reduce_sum(xent), tf.cast(tf.size(xent), tf.float32))


def _infonce(logits, positive, negative, request_ids, num_requests, temperature):
    """Mean over positives of -log softmax(positive | positive + its request's negatives)."""
    z = tf.cast(logits, tf.float32) / temperature
    ids = tf.cast(request_ids, tf.int32)
    num_requests = _num_requests(ids, num_requests)
    z_neg, neg_ids = tf.boolean_mask(z, negative), tf.boolean_mask(ids, negative)
    has_neg = tf.math.unsorted_segment_sum(tf.ones_like(z_neg), neg_ids, num_requests) > 0
    # The max shift keeps exp() finite; it cancels mathematically, so it needs no gradient.
    shift = tf.stop_gradient(
        tf.where(has_neg, tf.math.unsorted_segment_max(z_neg, neg_ids, num_requests), 0.0))
    sum_exp = tf.math.unsorted_segment_sum(tf.exp(z_neg - tf.gather(shift, neg_ids)), neg_ids, num_requests)
    # Requests without negatives take a dummy 1 so log() and its gradient stay finite; their
    # positives are dropped below.
    lse_neg = shift + tf.math.log(tf.where(has_neg, sum_exp, 1.0))
    z_pos, pos_ids = tf.boolean_mask(z, positive), tf.boolean_mask(ids, positive)
    # -log(e^p / (e^p + sum_n e^n)) = softplus(logsumexp_n - p), stable for any gap.
    per_positive = tf.nn.softplus(
        tf.boolean_mask(tf.gather(lse_neg, pos_ids) - z_pos, tf.gather(has_neg, pos_ids)))
    count = tf.cast(tf.size(per_positive), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_positive), count), count


def grouped_infonce(logits, labels, groups, request_ids, num_requests, negative_group,
                    temperature=DEFAULT_TEMPERATURE) -> tuple[tf.Tensor, tf.Tensor]:
    """InfoNCE of each exposed positive against its request's negatives of one group.

    Returns (loss, count): the mean over the positives whose request has at least one negative
    of `negative_group`, and their number (float32); (0, 0) when there is none. `labels` is
    unused (positives are the EP samples) and kept for one signature across the losses.
    """
    del labels
    return _infonce(logits, in_groups(groups, (c.EP,)), in_groups(groups, (negative_group,)),
                    request_ids, num_requests, temperature)


def pooled_infonce(logits, labels, groups, request_ids, num_requests,
                   temperature=DEFAULT_TEMPERATURE,
                   negative_groups=c.NEGATIVE_GROUPS) -> tuple[tf.Tensor, tf.Tensor]:
    """As `grouped_infonce`, but one softmax against all negatives of `negative_groups`."""
    del labels
    return _infonce(logits, in_groups(groups, (c.EP,)), in_groups(groups, negative_groups),
                    request_ids, num_requests, temperature)


class LossHarmonizer(tf.Module):
    """Per-group loss weights from EMAs of the group losses (rule in the module docstring)."""

    def __init__(self, groups, momentum=DEFAULT_MOMENTUM, name=None):
        super().__init__(name=name)
        self.groups = tuple(_group_name(g) for g in groups)
        self.momentum = momentum
        # Under a tf.distribute strategy every replica computes the loss of the whole step
        # (training.gather_replicas), hence the same update: the first replica's stands for all.
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.ema = tf.Variable(tf.zeros([len(self.groups)]), trainable=False, name="ema", aggregation=first)
        self.initialised = tf.Variable(
            tf.zeros([len(self.groups)], tf.bool), trainable=False, name="initialised", aggregation=first)

    def __call__(self, losses, counts, update=True) -> tf.Tensor:
        """float32 [G] weights for the [G] group `losses` with `counts` contributing positives."""
        losses = tf.cast(losses, tf.float32)
        active = counts > 0
        if update:
            blended = self.momentum * self.ema + (1.0 - self.momentum) * losses
            self.ema.assign(tf.where(active, tf.where(self.initialised, blended, losses), self.ema))
            self.initialised.assign(self.initialised | active)
        # Without an update (evaluation) a group never seen in training falls back to its value.
        scale = tf.maximum(tf.where(self.initialised, self.ema, losses), _MIN_EMA)
        active_f = tf.cast(active, tf.float32)
        mean = tf.math.divide_no_nan(tf.reduce_sum(scale * active_f), tf.reduce_sum(active_f))
        return tf.stop_gradient(active_f * mean / scale)


def _bce_mask(groups, bce_on):
    return None if bce_on is None else in_groups(groups, bce_on)


class GHCLLoss:
    """Gradient-harmonised contrastive loss: BCE plus one weighted InfoNCE per negative source.

    Called as loss(logits, labels, groups, request_ids, num_requests=None, update=True), it
    returns {"loss", "bce", "infonce_<G>", "weight_<G>", "count_<G>"} for each negative group G.
    `update=False` (evaluation) leaves the harmoniser's EMAs unchanged. Without harmonising
    every active group weighs 1.
    """

    def __init__(self, negative_groups=c.NEGATIVE_GROUPS, bce_on=None,
                 temperature=DEFAULT_TEMPERATURE, bce_weight=1.0, harmonize=True,
                 momentum=DEFAULT_MOMENTUM):
        self.negative_groups = tuple(_group_name(g) for g in negative_groups)
        self.bce_on = bce_on
        self.temperature = temperature
        self.bce_weight = bce_weight
        self.harmonizer = LossHarmonizer(self.negative_groups, momentum) if harmonize else None

    def __call__(self, logits, labels, groups, request_ids, num_requests=None, update=True) -> dict:
        num_requests = _num_requests(request_ids, num_requests)
        bce_value = bce(logits, labels, _bce_mask(groups, self.bce_on))
        terms = [grouped_infonce(logits, labels, groups, request_ids, num_requests, g, self.temperature)
                 for g in self.negative_groups]
        losses = tf.stack([loss for loss, _ in terms])
        counts = tf.stack([count for _, count in terms])
        if self.harmonizer is None:
            weights = tf.cast(counts > 0, tf.float32)
        else:
            weights = self.harmonizer(losses, counts, update=update)
        out = {"loss": self.bce_weight * bce_value + tf.reduce_sum(weights * losses), "bce": bce_value}
        for i, g in enumerate(self.negative_groups):
            out[f"infonce_{g}"] = losses[i]
            out[f"weight_{g}"] = weights[i]
            out[f"count_{g}"] = counts[i]
        return out


class PooledInfoNCELoss:
    """Baseline: BCE plus one InfoNCE against all negative sources pooled, unweighted.

    Same call as `GHCLLoss`; returns {"loss", "bce", "infonce_pooled", "count_pooled"}. It is
    stateless: `update` is accepted only so trainers can call every loss alike.
    """

    def __init__(self, negative_groups=c.NEGATIVE_GROUPS, bce_on=None,
                 temperature=DEFAULT_TEMPERATURE, bce_weight=1.0):
        self.negative_groups = tuple(negative_groups)
        self.bce_on = bce_on
        self.temperature = temperature
        self.bce_weight = bce_weight

    def __call__(self, logits, labels, groups, request_ids, num_requests=None, update=True) -> dict:
        del update
        bce_value = bce(logits, labels, _bce_mask(groups, self.bce_on))
        loss, count = pooled_infonce(logits, labels, groups, request_ids, num_requests,
                                     self.temperature, self.negative_groups)
        return {"loss": self.bce_weight * bce_value + loss, "bce": bce_value,
                "infonce_pooled": loss, "count_pooled": count}


class MixedBCELoss:
    """Baseline: BCE alone over the samples of `samples` (all samples when None).

    Same call as `GHCLLoss`; returns {"loss", "bce"}; `update` is accepted and unused.
    """

    def __init__(self, samples=None):
        self.samples = samples

    def __call__(self, logits, labels, groups, request_ids, num_requests=None, update=True) -> dict:
        del request_ids, num_requests, update
        value = bce(logits, labels, _bce_mask(groups, self.samples))
        return {"loss": value, "bce": value}


def make_loss(name: str, routing: SampleRouting, **settings):
    """The loss `name` ("ghcl", "mixed_bce", "pooled_infonce") over the samples `routing` selects.

    `settings` go to the loss's constructor (temperature, bce_weight, harmonize, momentum for
    GHCL; temperature, bce_weight for pooled_infonce; none for mixed_bce).
    """
    if name == "ghcl":
        return GHCLLoss(routing.contrasts, routing.bce_on, **settings)
    if name == "pooled_infonce":
        return PooledInfoNCELoss(routing.contrasts, routing.bce_on, **settings)
    if name == "mixed_bce":
        return MixedBCELoss(routing.trains_on, **settings)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSS_NAMES}")
