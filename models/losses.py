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

Harmonising rules (`GHCLLoss(harmonize=...)`, `HARMONIZE_RULES`; the default is "ema", chosen by
measurement: docs/decisions/0002-ghcl-default-loss.md). Each answers "how much does each
source's InfoNCE term steer the shared scorer", at a different level:

- "ema" (default, `LossHarmonizer` above): loss-scale equalisation, w_g = sg(mean_k ema_k / ema_g).
  Cheap (a few scalars per step); it equalises loss *values*, which is a proxy for gradient
  magnitude only when the terms' gradients scale like their values.
- "none": every active group weighs 1 (plain sum of the per-source InfoNCE terms).
- "gradnorm": per-source gradient-norm equalisation. With G_g = grad_theta L_g over all the
  scorer's trainable parameters theta (every one is shared by the sources: the light model's
  towers and head and the heavy model all score every source), w_g = sg(mean_k ||G_k|| / ||G_g||)
  over the active groups, so every source's weighted gradient has the same norm and their norms
  still sum to sum_g ||G_g|| (the total gradient scale is kept). It acts on what the EMA rule
  only approximates: a source whose gradient is drowned (small norm, e.g. EN, whose positives
  and negatives look alike) is amplified; one that dominates (easy random negatives early on)
  is damped. All parameters, not GradNorm's last shared layer: the scorers have no single layer
  that all of the signal passes through (the two-tower light model's user and item towers are
  separate until the dot product), and once the per-source gradients are computed the norms
  over every parameter cost nothing more. `gradnorm_weights` is the formula.
- "ghm": gradient-density reweighting of the samples within each group (GHM-C, Li et al. 2019).
  The gradient of one positive's term l_i = softplus(lse_neg - z_pos) with respect to its
  positive logit has norm g_i = sigmoid(lse_neg - z_pos) = 1 - p_i in [0, 1]. The group's
  positives are binned by g_i into M = `ghm_bins` equal bins of [0, 1];
  w_i = sg(N / (count(bin of i) * valid_bins)), N the group's positives and valid_bins the
  non-empty bins, so the weights average exactly 1 (the loss scale is kept) and the many
  well-separated positives (g near 0) or a crowd of outliers (g near 1) no longer dominate
  the group's gradient. Groups weigh 1 each across sources. `ghm_weights` is the formula.
- "pcgrad": projection of conflicting per-source gradients (PCGrad, Yu et al. 2020). For each
  active source g, in the fixed contract order of the groups, and each other active source h:
  when G_g . G_h < 0, G_g <- G_g - (G_g . G_h / ||G_h||^2) G_h, always against the *original*
  G_h; the projected gradients are summed. Non-conflicting gradients pass unchanged. The order
  is fixed, not random per step as in the paper, so that a seed reproduces a training; with two
  sources (the paper's heavy model: EN and RN) the order does not matter, and with more it matters
  only when a gradient conflicts with two others at once. It removes exactly the component of
  one source's update that undoes another's. `pcgrad_project` is the formula.

Default "ema" (docs/decisions/0002-ghcl-default-loss.md, which has the measurements and their
result files): no other rule, and no sampling setting, added to it on every dataset, and
"gradnorm" and "pcgrad" cost several times its step (benchmarks/loss_rules.py). Where the light
model's per-source gradients hardly conflict, their norms are close and validation keeps an
early epoch, the rules have little to act on. GHCL itself leads mixed_bce where the model trains
on few clicks and trails it, on EP vs EN above all, as the clicks grow: a softmax within one
request cannot learn what differs between requests (a user's or a context's propensity to
click), which only BCE learns, the better the more clicks it sees, and the harmoniser scales
down the largest InfoNCE term, EN's, most. It stays the default for the funnel, whose recall of
the oracle's top items it keeps ahead of mixed_bce's.

"gradnorm" and "pcgrad" need one parameter gradient per source: with them the loss reports the
unit-weighted terms and `RoutedTrainer.train_step` (models/training.py) computes the gradient
of bce_weight * BCE (+ regularisers) and of each InfoNCE_g with one persistent tape, flattens
the latter into a [G, P] stack (embedding gradients, IndexedSlices, are densified: the tables
are small next to a step's activations, and a dot product between two sparse gradients needs
a common index set anyway) and applies `GHCLLoss.combine_gradients`. Under a multi-replica
strategy each replica combines the gradients of its own share of the batch, an approximation
of the one-device rule. Their cost per step is measured by benchmarks/loss_rules.py.

Conflict-sensitive sampling (`GHCLLoss(sampling="saturation")`, default "fixed": every negative
the contract gives). A source whose InfoNCE term is saturated contributes only its hardest
negatives, so its easy ones stop diluting the gradient that the hard sources share with it:
- saturation, per group g: r_g = L_g^full / log(1 + n_g), the group's InfoNCE over all its
  negatives divided by that of a constant scorer (n_g the mean negatives per contributing
  request); 1 means nothing is learnt yet, 0 a separated group. It is smoothed by an EMA with
  the harmoniser's momentum (`NegativeSampler`).
- kept share: f_g = clip(r_g / max_k r_k, min_keep, 1): the least saturated source keeps all of
  its negatives, a source four times as saturated keeps a quarter (at least `min_keep`).
- per request r: k_rg = ceil(f_g * n_rg) (at least 1 when n_rg > 0), the k_rg highest-scoring
  negatives of g in r (`keep_counts`, `hardest_negatives`); the selection carries no gradient.
The harmonising rule then applies to the sampled terms.

BCE as one more path (`GHCLLoss(bce_path=True)`, "ghcl_bce"; default off): with the "ema" rule,
the BCE term joins the harmoniser like one more source, w_bce = sg(mean_k ema_k / ema_bce), the
mean now over the active InfoNCE groups and BCE, and total = bce_weight * w_bce * BCE +
sum_g w_g * InfoNCE_g. Why it might help: each InfoNCE term compares a positive only with its
own request's negatives, so it is blind to anything all of a request's candidates share (the
user's and the context's click propensity), while the per-source AUCs are taken over all
requests at once, and only BCE learns those effects. Unharmonised, BCE is a small share of the
total (TensorBoard's `bce` against the weighted `infonce_<source>` terms); as one more path it
weighs as much as each source. Where `mixed_bce` leads every contrastive loss, on EP vs EN, this
is the term that should carry it. Judged on datasets not seen before, it lifts EP vs EN a little
and loses more on the other sources where clicks are rare, so it is off by default
(docs/decisions/0002-ghcl-default-loss.md).

Batch-wide contrasts (`GHCLLoss(batch_contrasts=("EN",))`, "ghcl_batch_en"; default none): the
named groups' InfoNCE sets each positive against the negatives of that group in every request of
the batch, not only its own request's. Why it might help: EP vs EN is ranked across requests,
and a softmax within one request cannot learn what differs between requests. Measured, it raises
the mean per-source AUC on most sparse draws but costs funnel Recall@100 on some (the funnel
ranks within one request, which the per-request softmax trains for), so it is off by default
(docs/decisions/0002-ghcl-default-loss.md). Sampling is per request, so it needs
sampling="fixed".

The temperature divides the logits in the InfoNCE terms only; BCE sees the raw logits, which
therefore stay calibrated click logits. Default 1.0: 0.1 made GHCL unstable across seeds
(docs/decisions/0012-ghcl-temperature.md).
"""
from __future__ import annotations

import tensorflow as tf

from hap.data import contract as c
from hap.data.sample_routing import SampleRouting
from hap.models import transformed

from hap.models.loss_names import (DEFAULT_GHM_BINS, DEFAULT_HARMONIZE, DEFAULT_MIN_KEEP,  # noqa: E402,F401
                                   DEFAULT_MOMENTUM, DEFAULT_TEMPERATURE, GHCL_VARIANTS, GRADIENT_RULES,
                                   HARMONIZE_RULES, LOSS_NAMES, SAMPLING_MODES)
# The harmoniser's name for the BCE term when it is harmonised as one more path (`bce_path`).
BCE_PATH = "BCE"
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


def _infonce(logits, positive, negative, request_ids, num_requests, temperature, ghm_bins=None):
    """Mean over positives of -log softmax(positive | positive + its request's negatives);
    with `ghm_bins`, the GHM-weighted mean (`ghm_weights`)."""
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
    gap = tf.boolean_mask(tf.gather(lse_neg, pos_ids) - z_pos, tf.gather(has_neg, pos_ids))
    per_positive = tf.nn.softplus(gap)
    count = tf.cast(tf.size(per_positive), tf.float32)
    if ghm_bins:
        # d softplus(gap) / d z_pos = -sigmoid(gap): its norm is the GHM gradient of a positive.
        per_positive *= ghm_weights(tf.sigmoid(gap), ghm_bins)
    return tf.math.divide_no_nan(tf.reduce_sum(per_positive), count), count


def ghm_weights(gradient_norms, bins: int = DEFAULT_GHM_BINS) -> tf.Tensor:
    """GHM-C weights of [N] per-sample gradient norms in [0, 1] (module docstring, "ghm"):
    N / (count in the sample's bin * non-empty bins), M = `bins` equal bins; they average 1."""
    g = tf.clip_by_value(tf.cast(gradient_norms, tf.float32), 0.0, 1.0)
    index = tf.minimum(tf.cast(tf.floor(g * bins), tf.int32), bins - 1)
    per_bin = tf.math.unsorted_segment_sum(tf.ones_like(g), index, bins)
    valid = tf.reduce_sum(tf.cast(per_bin > 0, tf.float32))
    n = tf.cast(tf.size(g), tf.float32)
    return tf.stop_gradient(tf.math.divide_no_nan(n, tf.gather(per_bin, index) * valid))


def gradnorm_weights(norms, active) -> tf.Tensor:
    """[G] weights from the [G] per-source gradient norms (module docstring, "gradnorm"):
    mean_k ||G_k|| / ||G_g|| over the active sources, 0 for the inactive ones and for a
    source with a zero gradient (nothing to rescale), so that sum_g w_g ||G_g|| = sum_g ||G_g||."""
    norms = tf.cast(norms, tf.float32)
    active = tf.logical_and(tf.cast(active, tf.bool), norms > 0)
    active_f = tf.cast(active, tf.float32)
    mean = tf.math.divide_no_nan(tf.reduce_sum(norms * active_f), tf.reduce_sum(active_f))
    return tf.stop_gradient(active_f * tf.math.divide_no_nan(mean, norms))


def pcgrad_project(grads) -> tf.Tensor:
    """The [G, P] per-source gradients with each row projected, in row order, onto the normal
    plane of every original other row it conflicts with (negative dot product); module
    docstring, "pcgrad". Rows without conflict are returned unchanged."""
    grads = tf.convert_to_tensor(grads, tf.float32)
    originals = tf.unstack(grads)
    squared = [tf.reduce_sum(g * g) for g in originals]
    projected = []
    for i, g in enumerate(originals):
        for j, h in enumerate(originals):
            if i != j:
                dot = tf.reduce_sum(g * h)
                g = g - tf.where(dot < 0.0, tf.math.divide_no_nan(dot, squared[j]), 0.0) * h
        projected.append(g)
    return tf.stack(projected)


def keep_counts(negatives_per_request, fraction) -> tf.Tensor:
    """float32 [R]: the negatives of one source kept per request, ceil(fraction * n_r), at least
    1 where n_r > 0 (conflict-sensitive sampling)."""
    n = tf.cast(negatives_per_request, tf.float32)
    return tf.where(n > 0, tf.clip_by_value(tf.math.ceil(tf.cast(fraction, tf.float32) * n), 1.0, n), 0.0)


def hardest_negatives(logits, negative, request_ids, num_requests, keep) -> tf.Tensor:
    """bool [B]: the `keep[r]` highest-logit samples of `negative` in each request r (ties by
    position)."""
    ids = tf.cast(request_ids, tf.int32)
    index = tf.where(negative)[:, 0]
    z, neg_ids = tf.gather(tf.cast(logits, tf.float32), index), tf.gather(ids, index)
    by_score = tf.argsort(-z, stable=True)
    order = tf.gather(by_score, tf.argsort(tf.gather(neg_ids, by_score), stable=True))
    sorted_ids = tf.gather(neg_ids, order)
    per_request = tf.math.unsorted_segment_sum(tf.ones_like(z), neg_ids, num_requests)
    first = tf.gather(tf.cumsum(per_request, exclusive=True), sorted_ids)
    rank_sorted = tf.cast(tf.range(tf.size(order)), tf.float32) - first
    rank = tf.scatter_nd(order[:, None], rank_sorted, tf.shape(order))
    kept = rank < tf.gather(tf.cast(keep, tf.float32), neg_ids)
    return tf.scatter_nd(index[:, None], kept, tf.shape(negative, out_type=tf.int64))


def sampling_fractions(saturation, initialised, min_keep=DEFAULT_MIN_KEEP) -> tf.Tensor:
    """[G] kept shares f_g = clip(r_g / max_k r_k, min_keep, 1) of the [G] saturations r_g
    (module docstring, "Conflict-sensitive sampling"); 1 for a group not measured yet."""
    r = tf.maximum(tf.cast(saturation, tf.float32), _MIN_EMA)
    top = tf.reduce_max(tf.where(initialised, r, 0.0))
    share = tf.clip_by_value(tf.math.divide_no_nan(r, top), min_keep, 1.0)
    return tf.where(initialised, share, 1.0)


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


class _GroupEMA(tf.Module):
    """Per-group exponential moving averages, each initialised to the first value its group shows."""

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

    def _update(self, values, active) -> None:
        blended = self.momentum * self.ema + (1.0 - self.momentum) * values
        self.ema.assign(tf.where(active, tf.where(self.initialised, blended, values), self.ema))
        self.initialised.assign(self.initialised | active)


class LossHarmonizer(_GroupEMA):
    """Per-group loss weights from EMAs of the group losses (rule "ema" in the module docstring)."""

    def __call__(self, losses, counts, update=True) -> tf.Tensor:
        """float32 [G] weights for the [G] group `losses` with `counts` contributing positives."""
        losses = tf.cast(losses, tf.float32)
        active = counts > 0
        if update:
            self._update(losses, active)
        # Without an update (evaluation) a group never seen in training falls back to its value.
        scale = tf.maximum(tf.where(self.initialised, self.ema, losses), _MIN_EMA)
        active_f = tf.cast(active, tf.float32)
        mean = tf.math.divide_no_nan(tf.reduce_sum(scale * active_f), tf.reduce_sum(active_f))
        return tf.stop_gradient(active_f * mean / scale)


class NegativeSampler(_GroupEMA):
    """Conflict-sensitive sampling (module docstring): EMAs of each group's saturation
    r_g = L_g^full / log(1 + n_g), and the kept share of each group's negatives they imply."""

    def __init__(self, groups, momentum=DEFAULT_MOMENTUM, min_keep=DEFAULT_MIN_KEEP, name=None):
        super().__init__(groups, momentum, name=name)
        if not 0.0 < min_keep <= 1.0:
            raise ValueError(f"min_keep must be in (0, 1], got {min_keep}")
        self.min_keep = min_keep

    def fractions(self, full_losses, mean_negatives, counts, update=True) -> tf.Tensor:
        """[G] kept shares, after folding this step's [G] full-group losses into the EMAs."""
        if update:
            saturation = tf.math.divide_no_nan(tf.cast(full_losses, tf.float32), tf.math.log1p(mean_negatives))
            self._update(tf.stop_gradient(saturation), counts > 0)
        return tf.stop_gradient(sampling_fractions(self.ema, self.initialised, self.min_keep))


def _bce_mask(groups, bce_on):
    return None if bce_on is None else in_groups(groups, bce_on)


class GHCLLoss:
    """Gradient-harmonised contrastive loss: BCE plus one weighted InfoNCE per negative source.

    Called as loss(logits, labels, groups, request_ids, num_requests=None, update=True), it
    returns {"loss", "bce", "infonce_<G>", "weight_<G>", "count_<G>"} for each negative group G,
    and "kept_<G>" (the kept share of G's negatives) with sampling. `update=False` (evaluation)
    leaves the harmoniser's and the sampler's EMAs unchanged. `harmonize`: one of
    HARMONIZE_RULES (True and False, the older spelling, mean "ema" and "none"); with "none",
    "ghm" and the gradient rules every active group weighs 1 in "loss" (the gradient rules
    reweight or project the gradients in the train step: `combine_gradients`). `sampling`: one
    of SAMPLING_MODES.
    """

    def __init__(self, negative_groups=c.NEGATIVE_GROUPS, bce_on=None,
                 temperature=DEFAULT_TEMPERATURE, bce_weight=1.0, harmonize=DEFAULT_HARMONIZE,
                 momentum=DEFAULT_MOMENTUM, ghm_bins=DEFAULT_GHM_BINS, sampling="fixed",
                 min_keep=DEFAULT_MIN_KEEP, bce_path=False, batch_contrasts=()):
        if isinstance(harmonize, bool):
            harmonize = "ema" if harmonize else "none"
        if harmonize not in HARMONIZE_RULES:
            raise ValueError(f"harmonize must be one of {HARMONIZE_RULES}, got {harmonize!r}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if int(ghm_bins) < 1:
            raise ValueError(f"ghm_bins must be >= 1, got {ghm_bins}")
        if bce_path and harmonize != "ema":
            raise ValueError(f"bce_path harmonises BCE with the 'ema' rule; harmonize={harmonize!r}")
        self.negative_groups = tuple(_group_name(g) for g in negative_groups)
        self.batch_contrasts = tuple(_group_name(g) for g in batch_contrasts)
        if not set(self.batch_contrasts) <= set(self.negative_groups):
            raise ValueError(f"batch_contrasts must be among the negative groups {self.negative_groups}: "
                             f"{self.batch_contrasts}")
        if self.batch_contrasts and sampling != "fixed":
            raise ValueError("saturation sampling keeps negatives per request: batch_contrasts needs sampling='fixed'")
        self.bce_on = bce_on
        self.temperature = temperature
        self.bce_weight = bce_weight
        self.harmonize = harmonize
        self.ghm_bins = int(ghm_bins) if harmonize == "ghm" else None
        self.bce_path = bool(bce_path)
        paths = self.negative_groups + ((BCE_PATH,) if self.bce_path else ())
        self.harmonizer = LossHarmonizer(paths, momentum) if harmonize == "ema" else None
        self.sampler = (NegativeSampler(self.negative_groups, momentum, min_keep, name="sampler")
                        if sampling == "saturation" else None)

    @property
    def gradient_rule(self) -> str | None:
        """The rule the train step applies to per-source gradients, or None."""
        return self.harmonize if self.harmonize in GRADIENT_RULES else None

    def combine_gradients(self, grads, counts) -> tuple[tf.Tensor, tf.Tensor]:
        """(the [P] combined InfoNCE gradient, the [G] source weights) from the [G, P] per-source
        gradients and the [G] contributing positives, by the gradient rule."""
        grads = tf.convert_to_tensor(grads, tf.float32)
        active = tf.cast(counts, tf.float32) > 0
        if self.harmonize == "gradnorm":
            weights = gradnorm_weights(tf.norm(grads, axis=1), active)
            return tf.linalg.matvec(grads, weights, transpose_a=True), weights
        if self.harmonize == "pcgrad":
            # An inactive source's gradient is zero: it neither conflicts nor adds.
            weights = tf.cast(active, tf.float32)
            return tf.reduce_sum(pcgrad_project(grads), axis=0), weights
        raise ValueError(f"harmonize={self.harmonize!r} combines no gradients")

    def _negatives(self, logits, groups, request_ids, num_requests, update):
        """Per group, the bool [B] mask of its negatives the InfoNCE reads, and the kept shares."""
        masks = [in_groups(groups, (g,)) for g in self.negative_groups]
        if self.sampler is None:
            return masks, None
        ids = tf.cast(request_ids, tf.int32)
        positive = in_groups(groups, (c.EP,))
        has_pos = tf.math.unsorted_segment_sum(tf.cast(positive, tf.float32), ids, num_requests) > 0
        full, mean_negatives, per_request = [], [], []
        still = tf.stop_gradient(logits)
        for mask in masks:
            n = tf.math.unsorted_segment_sum(tf.cast(mask, tf.float32), ids, num_requests)
            contributing = tf.cast(has_pos & (n > 0), tf.float32)
            mean_negatives.append(tf.math.divide_no_nan(tf.reduce_sum(n * contributing), tf.reduce_sum(contributing)))
            full.append(_infonce(still, positive, mask, ids, num_requests, self.temperature))
            per_request.append(n)
        counts = tf.stack([count for _, count in full])
        fractions = self.sampler.fractions(tf.stack([loss for loss, _ in full]), tf.stack(mean_negatives),
                                           counts, update=update)
        kept = [hardest_negatives(logits, mask, ids, num_requests, keep_counts(n, fractions[i]))
                for i, (mask, n) in enumerate(zip(masks, per_request))]
        return kept, fractions

    def __call__(self, logits, labels, groups, request_ids, num_requests=None, update=True) -> dict:
        num_requests = _num_requests(request_ids, num_requests)
        bce_value = bce(logits, labels, _bce_mask(groups, self.bce_on))
        negatives, fractions = self._negatives(logits, groups, request_ids, num_requests, update)
        positive = in_groups(groups, (c.EP,))
        # A batch-wide contrast is one softmax per positive over every request's negatives of its
        # group: the whole batch as one request.
        whole_batch = tf.zeros_like(tf.cast(request_ids, tf.int32)), tf.constant(1, tf.int32)
        terms = [_infonce(logits, positive, negative,
                          *(whole_batch if g in self.batch_contrasts else (request_ids, num_requests)),
                          self.temperature, self.ghm_bins)
                 for g, negative in zip(self.negative_groups, negatives)]
        losses = tf.stack([loss for loss, _ in terms])
        counts = tf.stack([count for _, count in terms])
        bce_scale = tf.constant(1.0)
        if self.harmonizer is None:
            weights = tf.cast(counts > 0, tf.float32)
        elif self.bce_path:
            mask = _bce_mask(groups, self.bce_on)
            bce_count = tf.cast(tf.size(logits) if mask is None else tf.math.count_nonzero(mask), tf.float32)
            weights = self.harmonizer(tf.concat([losses, [bce_value]], 0), tf.concat([counts, [bce_count]], 0),
                                      update=update)
            weights, bce_scale = weights[:-1], weights[-1]
        else:
            weights = self.harmonizer(losses, counts, update=update)
        out = {"loss": self.bce_weight * bce_scale * bce_value + tf.reduce_sum(weights * losses), "bce": bce_value}
        if self.bce_path:
            out["weight_bce"] = bce_scale
        for i, g in enumerate(self.negative_groups):
            out[f"infonce_{g}"] = losses[i]
            out[f"weight_{g}"] = weights[i]
            out[f"count_{g}"] = counts[i]
            if fractions is not None:
                out[f"kept_{g}"] = fractions[i]
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
    """The loss `name` (LOSS_NAMES) over the samples `routing` selects.

    A GHCL name's GHCL_VARIANTS settings come first and `settings` override them; `settings` go to the loss's constructor (temperature, bce_weight, harmonize, momentum,
    ghm_bins, sampling, min_keep for GHCL; temperature, bce_weight for pooled_infonce; none for
    mixed_bce).
    """
    if name in GHCL_VARIANTS:
        return GHCLLoss(routing.contrasts, routing.bce_on, **{**GHCL_VARIANTS[name], **settings})
    if name == "pooled_infonce":
        return PooledInfoNCELoss(routing.contrasts, routing.bce_on, **settings)
    if name == "mixed_bce":
        return MixedBCELoss(routing.trains_on, **settings)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSS_NAMES}")
