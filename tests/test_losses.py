"""Closed-form checks of the sample-routing losses; expected values come from numpy, by hand."""
import numpy as np
import pytest
import tensorflow as tf

from hap.data.sample_routing import SampleRouting, routing_of
from hap.models import losses

EP, EN, RN, PRN, GN = range(5)
# The paper's heavy model: EP, EN and RN only, BCE where clicks were observed (built here, not
# looked up, so these checks do not depend on which routing a model trains with by default).
HARD = SampleRouting(trains_on=("EP", "EN", "RN"), contrasts=("EN", "RN"), bce_on=("EP", "EN"))


def nce(positive, negatives, temperature=1.0):
    """-log softmax of one positive against its negatives, the textbook way."""
    z = np.asarray([positive, *negatives], np.float64) / temperature
    return float(-np.log(np.exp(z[0]) / np.exp(z).sum()))


def np_bce(logits, labels):
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    y = np.asarray(labels, np.float64)
    return float(np.mean(-y * np.log(p) - (1 - y) * np.log(1 - p)))


def batch(rows):
    """rows: (request_id, group, logit) -> logits, labels, groups, request_ids, num_requests."""
    rid, grp, logit = zip(*rows)
    return (tf.constant(logit, tf.float32), tf.constant([float(g == EP) for g in grp]),
            tf.constant(grp, tf.int64), tf.constant(rid, tf.int32), max(rid) + 1)


# One request with every sample group.
ALL_GROUPS = [(0, EP, 1.5), (0, EN, 0.5), (0, EN, -0.2), (0, RN, 1.0),
              (0, PRN, -1.0), (0, PRN, 0.3), (0, GN, -2.0)]
NEGATIVES = {EN: [0.5, -0.2], RN: [1.0], PRN: [-1.0, 0.3], GN: [-2.0]}


def test_infonce_one_request():
    loss, count = losses.grouped_infonce(*batch([(0, EP, 2.0), (0, EN, 1.0), (0, EN, 0.0)]), "EN", 1.0)
    assert float(count) == 1.0
    assert float(loss) == pytest.approx(-np.log(np.e ** 2 / (np.e ** 2 + np.e + 1.0)), rel=1e-6)


def test_infonce_temperature_scales_logits():
    loss, _ = losses.grouped_infonce(*batch([(0, EP, 2.0), (0, EN, 1.0), (0, EN, 0.0)]), EN, 0.5)
    assert float(loss) == pytest.approx(-np.log(np.e ** 4 / (np.e ** 4 + np.e ** 2 + 1.0)), rel=1e-6)


def test_infonce_averages_over_positives_of_two_requests():
    rows = [(0, EP, 2.0), (0, EP, 0.5), (0, EN, 1.0), (1, EN, 3.0), (1, EP, 1.0), (1, EN, -1.0)]
    loss, count = losses.grouped_infonce(*batch(rows), "EN", 1.0)
    expected = np.mean([nce(2.0, [1.0]), nce(0.5, [1.0]), nce(1.0, [3.0, -1.0])])
    assert float(count) == 3.0
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_positive_contrasts_only_with_its_own_request():
    # Request 1's huge negatives would dominate request 0's softmax if they leaked into it.
    rows = [(0, EP, 0.0), (1, EN, 50.0), (0, EN, -1.0), (1, EN, 40.0), (2, EN, 0.0)]
    loss, count = losses.grouped_infonce(*batch(rows), "EN", 1.0)
    assert float(count) == 1.0
    assert float(loss) == pytest.approx(nce(0.0, [-1.0]), rel=1e-6)


def test_infonce_is_stable_for_large_logits():
    loss, _ = losses.grouped_infonce(*batch([(0, EP, 1000.0), (0, EN, 999.0), (0, EN, -1000.0)]), "EN", 0.1)
    assert float(loss) == pytest.approx(np.log1p(np.exp(-10.0)), rel=1e-4)


def test_bce_matches_numpy():
    logits, labels = [2.0, -1.0, 0.3, -4.0], [1.0, 0.0, 0.0, 1.0]
    assert float(losses.bce(tf.constant(logits), tf.constant(labels))) == pytest.approx(np_bce(logits, labels), rel=1e-6)
    mask = tf.constant([True, False, True, False])
    assert float(losses.bce(tf.constant(logits), tf.constant(labels), mask)) == pytest.approx(
        np_bce([2.0, 0.3], [1.0, 0.0]), rel=1e-6)
    assert float(losses.bce(tf.constant(logits), tf.constant(labels), tf.zeros([4], tf.bool))) == 0.0


def test_each_group_contrasts_only_its_own_negatives():
    args = batch(ALL_GROUPS)
    for group, negatives in NEGATIVES.items():
        loss, count = losses.grouped_infonce(*args, group, 1.0)
        assert float(count) == 1.0
        assert float(loss) == pytest.approx(nce(1.5, negatives), rel=1e-6), group

    out = losses.GHCLLoss(temperature=1.0, harmonize=False)(*args)
    logits = [r[2] for r in ALL_GROUPS]
    expected_bce = np_bce(logits, [1.0] + [0.0] * 6)
    per_group = {losses.c.SAMPLE_GROUPS[g]: nce(1.5, n) for g, n in NEGATIVES.items()}
    assert float(out["bce"]) == pytest.approx(expected_bce, rel=1e-6)
    for name, value in per_group.items():
        assert float(out[f"infonce_{name}"]) == pytest.approx(value, rel=1e-6)
        assert float(out[f"weight_{name}"]) == 1.0
    assert float(out["loss"]) == pytest.approx(expected_bce + sum(per_group.values()), rel=1e-6)


def test_pooled_infonce_uses_all_negatives():
    loss, count = losses.pooled_infonce(*batch(ALL_GROUPS), temperature=1.0)
    assert float(count) == 1.0
    assert float(loss) == pytest.approx(nce(1.5, sum(NEGATIVES.values(), [])), rel=1e-6)
    out = losses.make_loss("pooled_infonce", routing_of("light"), temperature=1.0)(*batch(ALL_GROUPS))
    assert float(out["loss"]) == pytest.approx(float(out["bce"]) + float(loss), rel=1e-6)


def _finite(out):
    return all(np.all(np.isfinite(v.numpy())) for v in out.values())


def test_request_without_positive_only_feeds_bce():
    rows = [(0, EN, 0.4), (0, RN, -0.3), (0, PRN, 1.2), (0, GN, -2.0)]
    args = batch(rows)
    logits = tf.Variable(args[0])
    with tf.GradientTape() as tape:
        out = losses.GHCLLoss(temperature=1.0)(logits, *args[1:])
    for g in ("EN", "RN", "PRN", "GN"):
        assert float(out[f"count_{g}"]) == 0.0
        assert float(out[f"infonce_{g}"]) == 0.0
        assert float(out[f"weight_{g}"]) == 0.0
    assert float(out["loss"]) == pytest.approx(np_bce([r[2] for r in rows], [0.0] * 4), rel=1e-6)
    assert _finite(out) and np.all(np.isfinite(tape.gradient(out["loss"], logits).numpy()))


def test_group_without_negatives_gets_count_zero_and_weight_zero():
    ghcl = losses.GHCLLoss(temperature=1.0)
    args = batch([(0, EP, 1.0), (0, EN, 0.0), (1, EN, 2.0), (1, RN, 0.5)])
    logits = tf.Variable(args[0])
    with tf.GradientTape() as tape:
        out = ghcl(logits, *args[1:])
    assert float(out["count_EN"]) == 1.0 and float(out["weight_EN"]) == pytest.approx(1.0)
    for g in ("RN", "PRN", "GN"):  # request 1's RN has no positive to contrast with
        assert float(out[f"count_{g}"]) == 0.0
        assert float(out[f"infonce_{g}"]) == 0.0
        assert float(out[f"weight_{g}"]) == 0.0
    assert _finite(out) and np.all(np.isfinite(tape.gradient(out["loss"], logits).numpy()))
    assert ghcl.harmonizer.initialised.numpy().tolist() == [True, False, False, False]
    assert ghcl.harmonizer.ema.numpy()[1:].tolist() == [0.0, 0.0, 0.0]


def test_empty_batch_is_zero():
    empty = (tf.zeros([0]), tf.zeros([0]), tf.zeros([0], tf.int64), tf.zeros([0], tf.int32), 0)
    for name in losses.LOSS_NAMES:
        out = losses.make_loss(name, routing_of("light"))(*empty)
        assert float(out["loss"]) == 0.0 and _finite(out)


def test_harmonizer_first_value_initialises_the_ema():
    h = losses.LossHarmonizer(("EN", "RN", "PRN"), momentum=0.9)
    weights = h(tf.constant([1.0, 2.0, 4.0]), tf.constant([3.0, 1.0, 2.0]))
    np.testing.assert_allclose(weights.numpy(), (7 / 3) / np.array([1.0, 2.0, 4.0]), rtol=1e-6)


def test_harmonizer_weights_approach_mean_over_loss():
    h = losses.LossHarmonizer(("EN", "RN", "PRN", "GN"), momentum=0.9)
    counts = tf.ones([4])
    h(tf.constant([3.0, 0.5, 2.0, 9.0]), counts)  # a first value far from the steady state
    target = np.array([1.0, 2.0, 4.0, 0.5])
    for _ in range(300):
        weights = h(tf.constant(target, tf.float32), counts)
    np.testing.assert_allclose(weights.numpy(), target.mean() / target, rtol=1e-5)
    np.testing.assert_allclose(h.ema.numpy(), target, rtol=1e-5)


def test_harmonizer_inactive_group_keeps_its_ema_and_leaves_the_mean():
    h = losses.LossHarmonizer(("EN", "RN", "GN"), momentum=0.5)
    h(tf.constant([1.0, 3.0, 8.0]), tf.ones([3]))
    weights = h(tf.constant([3.0, 99.0, 8.0]), tf.constant([1.0, 0.0, 1.0]))
    # EN: 0.5 * 1 + 0.5 * 3 = 2; RN untouched; GN stays 8; mean over EN and GN = 5.
    np.testing.assert_allclose(h.ema.numpy(), [2.0, 3.0, 8.0])
    np.testing.assert_allclose(weights.numpy(), [5.0 / 2.0, 0.0, 5.0 / 8.0], rtol=1e-6)


def test_update_false_leaves_the_ema_unchanged():
    ghcl = losses.GHCLLoss(temperature=1.0, momentum=0.5)
    args = batch(ALL_GROUPS)
    first = ghcl(*args)
    ema = ghcl.harmonizer.ema.numpy().copy()
    out = ghcl(args[0] * 3.0, *args[1:], update=False)
    np.testing.assert_array_equal(ghcl.harmonizer.ema.numpy(), ema)
    for g in ("EN", "RN", "PRN", "GN"):  # weights still come from the stored EMA
        assert float(out[f"weight_{g}"]) == pytest.approx(float(first[f"weight_{g}"]), rel=1e-6)


@pytest.mark.parametrize("update", [True, False])
def test_weights_are_stop_gradient(update):
    # Without an update a fresh harmoniser weighs by this step's own losses, the case where a
    # missing stop_gradient would leak into the gradient.
    rows = ALL_GROUPS + [(1, EP, -0.5), (1, EN, 0.7), (1, RN, 0.2), (1, GN, 0.1)]
    args = batch(rows)
    logits = tf.Variable(args[0])
    ghcl = losses.GHCLLoss(temperature=0.5, bce_weight=0.7)
    with tf.GradientTape(persistent=True) as tape:
        out = ghcl(logits, *args[1:], update=update)
    names = ("EN", "RN", "PRN", "GN")
    weights = [float(out[f"weight_{g}"]) for g in names]
    assert len(set(np.round(weights, 6))) == 4  # genuinely unequal weights, so the check has teeth
    expected = 0.7 * tape.gradient(out["bce"], logits).numpy()
    for g, w in zip(names, weights):
        expected += w * tape.gradient(out[f"infonce_{g}"], logits).numpy()
    np.testing.assert_allclose(tape.gradient(out["loss"], logits).numpy(), expected, rtol=1e-5, atol=1e-7)


def test_heavy_ghcl_ignores_prn_and_gn():
    ghcl = losses.make_loss("ghcl", HARD, temperature=1.0)
    assert ghcl.negative_groups == ("EN", "RN")
    args = batch(ALL_GROUPS)
    logits = tf.Variable(args[0])
    with tf.GradientTape() as tape:
        out = ghcl(logits, *args[1:])
    grad = tape.gradient(out["loss"], logits).numpy()
    groups = [r[1] for r in ALL_GROUPS]
    for g, d in zip(groups, grad):
        assert (d == 0.0) == (g in (PRN, GN))
    assert not any(k.endswith(("_PRN", "_GN")) for k in out)
    # BCE on the exposed samples only: the EP at 1.5 and the two EN.
    assert float(out["bce"]) == pytest.approx(np_bce([1.5, 0.5, -0.2], [1.0, 0.0, 0.0]), rel=1e-6)


def test_heavy_baselines_use_ep_en_rn_only():
    args = batch(ALL_GROUPS)
    out = losses.make_loss("mixed_bce", HARD)(*args)
    assert float(out["loss"]) == pytest.approx(np_bce([1.5, 0.5, -0.2, 1.0], [1.0, 0.0, 0.0, 0.0]), rel=1e-6)
    out = losses.make_loss("pooled_infonce", HARD, temperature=1.0)(*args)
    assert float(out["infonce_pooled"]) == pytest.approx(nce(1.5, [0.5, -0.2, 1.0]), rel=1e-6)
    assert float(out["bce"]) == pytest.approx(np_bce([1.5, 0.5, -0.2], [1.0, 0.0, 0.0]), rel=1e-6)
    light = losses.make_loss("mixed_bce", routing_of("light"))(*args)
    assert float(light["loss"]) == pytest.approx(np_bce([r[2] for r in ALL_GROUPS], [1.0] + [0.0] * 6), rel=1e-6)


def test_losses_run_under_tf_function_with_unknown_batch():
    two_requests = ALL_GROUPS + [(1, EP, -0.5), (1, EN, 0.7), (1, GN, 0.1)]
    for name in losses.LOSS_NAMES:
        graph_loss = losses.make_loss(name, routing_of("light"), **({} if name == "mixed_bce" else {"temperature": 1.0}))
        eager_loss = losses.make_loss(name, routing_of("light"), **({} if name == "mixed_bce" else {"temperature": 1.0}))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32),
                                      tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string)])
        def step(logits, labels, groups, keys, loss=graph_loss):
            ids, num_requests = losses.dense_request_ids(keys)
            return loss(logits, labels, groups, ids, num_requests)

        for rows in (ALL_GROUPS, two_requests):
            logits, labels, groups, ids, n = batch(rows)
            keys = tf.strings.as_string(ids + 100)
            graph, eager = step(logits, labels, groups, keys), eager_loss(logits, labels, groups, ids, n)
            assert set(graph) == set(eager)
            for key in eager:
                assert float(graph[key]) == pytest.approx(float(eager[key]), rel=1e-6), (name, key)


def test_dense_request_ids():
    ids, n = losses.dense_request_ids(tf.constant(["r9", "r2", "r9", "r5", "r2"]))
    assert ids.numpy().tolist() == [0, 1, 0, 2, 1] and int(n) == 3
    ids, n = losses.dense_request_ids(tf.constant([7, 7, 3], tf.int64))
    assert ids.dtype == tf.int32 and ids.numpy().tolist() == [0, 0, 1] and int(n) == 2


def test_num_requests_is_inferred_when_omitted():
    logits, labels, groups, ids, _ = batch([(0, EP, 2.0), (0, EN, 1.0), (1, EP, 0.0), (1, EN, 0.5)])
    loss, count = losses.grouped_infonce(logits, labels, groups, ids, None, "EN", 1.0)
    assert float(count) == 2.0
    assert float(loss) == pytest.approx(np.mean([nce(2.0, [1.0]), nce(0.0, [0.5])]), rel=1e-6)


def test_make_loss_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        losses.make_loss("focal", routing_of("light"))
    with pytest.raises(ValueError, match="'medium'"):
        routing_of("medium")


# ---------------------------------------------------------------------------------------------
# Harmonising rules and conflict-sensitive sampling (module docstring), on hand-built numbers


def test_ema_rule_keeps_the_total_loss_scale():
    h = losses.LossHarmonizer(("EN", "RN", "PRN"))
    values = tf.constant([0.5, 2.0, 6.0])
    weights = h(values, tf.ones([3])).numpy()
    assert float(np.sum(weights * h.ema.numpy())) == pytest.approx(float(np.sum(h.ema.numpy())), rel=1e-6)
    np.testing.assert_allclose(weights * values.numpy(), np.full(3, 8.5 / 3), rtol=1e-6)


def test_gradnorm_weights_equalise_norms_and_keep_their_sum():
    norms = np.array([1.0, 2.0, 4.0])
    weights = losses.gradnorm_weights(norms, [True, True, True]).numpy()
    np.testing.assert_allclose(weights, [7 / 3, 7 / 6, 7 / 12], rtol=1e-6)
    np.testing.assert_allclose(weights * norms, np.full(3, 7 / 3), rtol=1e-6)  # equal norms
    assert float(np.sum(weights * norms)) == pytest.approx(7.0)  # their sum kept
    # An inactive source, and one with a zero gradient, get 0 and leave the mean.
    weights = losses.gradnorm_weights([1.0, 2.0, 5.0, 0.0], [True, True, False, True]).numpy()
    np.testing.assert_allclose(weights, [1.5, 0.75, 0.0, 0.0], rtol=1e-6)


def test_gradnorm_combines_the_reweighted_gradients():
    ghcl = losses.GHCLLoss(("EN", "RN"), harmonize="gradnorm")
    combined, weights = ghcl.combine_gradients([[3.0, 4.0], [0.0, 1.0]], [2.0, 1.0])
    # norms 5 and 1, mean 3: weights 0.6 and 3, each weighted gradient of norm 3.
    np.testing.assert_allclose(weights.numpy(), [0.6, 3.0], rtol=1e-6)
    np.testing.assert_allclose(combined.numpy(), [1.8, 2.4 + 3.0], rtol=1e-6)


def test_pcgrad_leaves_non_conflicting_gradients_unchanged():
    grads = np.array([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 3.0, 1.0]], np.float32)
    np.testing.assert_array_equal(losses.pcgrad_project(grads).numpy(), grads)


def test_pcgrad_removes_exactly_the_conflicting_component():
    grads = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)  # dot -1: a conflict
    projected = losses.pcgrad_project(grads).numpy()
    # g1 - (g1.g2 / |g2|^2) g2 = [1, 0] + 0.5 [-1, 1]; g2 - (g2.g1 / |g1|^2) g1 = [-1, 1] + [1, 0].
    np.testing.assert_allclose(projected, [[0.5, 0.5], [0.0, 1.0]], atol=1e-7)
    assert projected[0] @ grads[1] == pytest.approx(0.0, abs=1e-7)
    assert projected[1] @ grads[0] == pytest.approx(0.0, abs=1e-7)
    # A third source that conflicts with neither is left alone, and so is its effect on the others.
    three = np.array([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    np.testing.assert_allclose(losses.pcgrad_project(three).numpy(),
                               [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], atol=1e-7)
    ghcl = losses.GHCLLoss(("EN", "RN"), harmonize="pcgrad")
    combined, weights = ghcl.combine_gradients(grads, [1.0, 1.0])
    np.testing.assert_allclose(combined.numpy(), [0.5, 1.5], atol=1e-7)
    np.testing.assert_array_equal(weights.numpy(), [1.0, 1.0])


def test_pcgrad_projects_in_row_order_against_the_original_gradients():
    # g1 conflicts with g2 and g3: projected against g2 first, then against the original g3.
    g = np.array([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], np.float32)
    first = g[0] - (g[0] @ g[1]) / (g[1] @ g[1]) * g[1]           # [0.5, 0.5]: g1 . g3 is now -1
    expected = first - (first @ g[2]) / (g[2] @ g[2]) * g[2]       # [0, 0]
    np.testing.assert_allclose(losses.pcgrad_project(g).numpy()[0], expected, atol=1e-7)


def test_ghm_weights_follow_the_gradient_density_and_average_one():
    weights = losses.ghm_weights([0.05, 0.06, 0.07, 0.95], bins=10).numpy()
    # bins 0 (three samples) and 9 (one) of two non-empty: 4 / (3 * 2) and 4 / (1 * 2).
    np.testing.assert_allclose(weights, [2 / 3, 2 / 3, 2 / 3, 2.0], rtol=1e-6)
    rng = np.random.default_rng(0)
    for bins in (1, 5, 30):
        w = losses.ghm_weights(rng.uniform(size=257), bins=bins).numpy()
        assert w.mean() == pytest.approx(1.0, rel=1e-5)
    assert losses.ghm_weights(tf.zeros([0]), bins=10).numpy().size == 0
    assert losses.ghm_weights([1.0, 0.0], bins=10).numpy().tolist() == [1.0, 1.0]  # g = 1 is the top bin


def test_ghcl_ghm_weighs_each_positive_by_its_gradient_density():
    rows = [(0, EP, 3.0), (0, EN, 0.0), (1, EP, 2.5), (1, EN, 0.0), (2, EP, -2.0), (2, EN, 0.0)]
    ghcl = losses.GHCLLoss(("EN",), harmonize="ghm", ghm_bins=10)
    out = ghcl(*batch(rows))
    per_positive = np.array([nce(3.0, [0.0]), nce(2.5, [0.0]), nce(-2.0, [0.0])])
    g = 1.0 - np.exp(-per_positive)  # |dl/dz_pos| = 1 - p: 0.047, 0.076 (bin 0) and 0.88 (bin 8)
    assert np.floor(g * 10).tolist() == [0.0, 0.0, 8.0]
    weights = np.array([3 / 4, 3 / 4, 3 / 2])
    assert float(out["infonce_EN"]) == pytest.approx(np.mean(weights * per_positive), rel=1e-5)
    assert float(out["weight_EN"]) == 1.0


def test_rules_without_a_loss_level_weight_sum_the_groups():
    args = batch(ALL_GROUPS)
    for name in ("ghcl_none", "ghcl_gradnorm", "ghcl_pcgrad"):
        out = losses.make_loss(name, routing_of("light"), temperature=1.0)(*args)
        expected = np_bce([r[2] for r in ALL_GROUPS], [1.0] + [0.0] * 6) + sum(
            nce(1.5, NEGATIVES[g]) for g in NEGATIVES)
        assert float(out["loss"]) == pytest.approx(expected, rel=1e-6), name
    assert losses.make_loss("ghcl_gradnorm", routing_of("light")).gradient_rule == "gradnorm"
    assert losses.make_loss("ghcl", routing_of("light")).gradient_rule is None
    assert losses.GHCLLoss(harmonize=True).harmonize == "ema" and losses.GHCLLoss(harmonize=False).harmonize == "none"
    with pytest.raises(ValueError, match="harmonize"):
        losses.GHCLLoss(harmonize="adam")
    with pytest.raises(ValueError, match="sampling"):
        losses.GHCLLoss(sampling="random")


def test_keep_counts_follow_the_kept_share():
    n = tf.constant([0.0, 1.0, 4.0, 10.0])
    assert losses.keep_counts(n, 0.25).numpy().tolist() == [0.0, 1.0, 1.0, 3.0]
    assert losses.keep_counts(n, 0.5).numpy().tolist() == [0.0, 1.0, 2.0, 5.0]
    assert losses.keep_counts(n, 1.0).numpy().tolist() == [0.0, 1.0, 4.0, 10.0]


def test_sampling_fractions_keep_all_of_the_least_saturated_source():
    fractions = losses.sampling_fractions([0.8, 0.4, 0.1, 0.0], [True, True, True, False], min_keep=0.25)
    np.testing.assert_allclose(fractions.numpy(), [1.0, 0.5, 0.25, 1.0], rtol=1e-6)


def test_hardest_negatives_keeps_the_top_scored_per_request():
    #            r0 EP  r0 EN  r0 EN  r1 EN  r0 EN  r1 EN  r1 EP
    logits = tf.constant([3.0, 0.1, 0.9, 2.0, 0.5, -1.0, 0.0])
    negative = tf.constant([False, True, True, True, True, True, False])
    ids = tf.constant([0, 0, 0, 1, 0, 1, 1])
    kept = losses.hardest_negatives(logits, negative, ids, 2, tf.constant([2.0, 1.0])).numpy()
    assert kept.tolist() == [False, False, True, True, True, False, False]
    assert not losses.hardest_negatives(tf.zeros([2]), tf.constant([False, False]), tf.constant([0, 0]), 1,
                                        tf.constant([1.0])).numpy().any()


def test_saturation_sampling_keeps_the_hardest_negatives_of_a_saturated_source():
    # EN: one negative level with the positive (saturation log 2 / log 2 = 1); GN: four easy ones.
    rows = [(0, EP, 0.0), (0, EN, 0.0), (0, GN, -5.0), (0, GN, -8.0), (0, GN, -6.0), (0, GN, -7.0)]
    ghcl = losses.GHCLLoss(("EN", "GN"), harmonize="none", sampling="saturation", min_keep=0.25)
    out = ghcl(*batch(rows))
    saturation_gn = nce(0.0, [-5.0, -6.0, -7.0, -8.0]) / np.log(5.0)
    assert float(out["kept_EN"]) == 1.0
    assert float(out["kept_GN"]) == pytest.approx(0.25)  # saturation_gn is far below 0.25
    assert saturation_gn < 0.25
    np.testing.assert_allclose(ghcl.sampler.ema.numpy(), [1.0, saturation_gn], rtol=1e-5)
    assert float(out["infonce_EN"]) == pytest.approx(nce(0.0, [0.0]), rel=1e-6)
    assert float(out["infonce_GN"]) == pytest.approx(nce(0.0, [-5.0]), rel=1e-5)  # ceil(0.25 * 4) = 1, the top
    # A share of 0.5 keeps two of the four, the two highest.
    ghcl = losses.GHCLLoss(("EN", "GN"), harmonize="none", sampling="saturation", min_keep=0.5)
    assert float(ghcl(*batch(rows))["infonce_GN"]) == pytest.approx(nce(0.0, [-5.0, -6.0]), rel=1e-5)
    # Without sampling every negative counts.
    out = losses.GHCLLoss(("EN", "GN"), harmonize="none")(*batch(rows))
    assert float(out["infonce_GN"]) == pytest.approx(nce(0.0, [-5.0, -6.0, -7.0, -8.0]), rel=1e-5)
    assert "kept_GN" not in out


def test_bce_path_weighs_bce_like_one_more_source():
    # First step: every EMA is its own value, so each weighted term, BCE's included, is the mean
    # of the five values, and the total keeps their sum.
    out = losses.GHCLLoss(bce_path=True)(*batch(ALL_GROUPS))
    values = [nce(1.5, NEGATIVES[g]) for g in (EN, RN, PRN, GN)]
    bce_value = np_bce([x for _, _, x in ALL_GROUPS], [float(g == EP) for _, g, _ in ALL_GROUPS])
    mean = (sum(values) + bce_value) / 5
    assert float(out["bce"]) == pytest.approx(bce_value, rel=1e-5)
    assert float(out["weight_bce"]) == pytest.approx(mean / bce_value, rel=1e-5)
    for name, value in zip(("EN", "RN", "PRN", "GN"), values):
        assert float(out[f"weight_{name}"]) == pytest.approx(mean / value, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(sum(values) + bce_value, rel=1e-5)
    # Without the path BCE keeps weight 1 and the sources share their own mean.
    plain = losses.GHCLLoss()(*batch(ALL_GROUPS))
    assert "weight_bce" not in plain
    assert float(plain["loss"]) == pytest.approx(sum(values) + bce_value, rel=1e-5)
    assert float(plain["weight_EN"]) == pytest.approx(np.mean(values) / values[0], rel=1e-5)


def test_bce_path_counts_only_the_bce_samples_and_needs_the_ema_rule():
    # The heavy routing's BCE reads EP and EN only; a batch without them leaves BCE inactive (weight 0).
    rows = [(0, RN, 0.2), (0, RN, -0.1)]
    out = losses.make_loss("ghcl_bce", HARD)(*batch(rows))
    assert float(out["weight_bce"]) == 0.0 and float(out["loss"]) == 0.0
    assert losses.make_loss("ghcl_bce", HARD).bce_path
    with pytest.raises(ValueError, match="bce_path"):
        losses.GHCLLoss(harmonize="gradnorm", bce_path=True)


def test_a_batch_wide_contrast_sets_each_positive_against_every_requests_negatives():
    # Two requests: EN is contrasted across both, RN within each request as before.
    rows = [(0, EP, 2.0), (0, EN, 1.0), (0, RN, 0.5), (1, EP, 0.0), (1, EN, 3.0), (1, RN, -1.0)]
    out = losses.make_loss("ghcl_batch_en", HARD, harmonize="none", temperature=1.0)(*batch(rows))
    assert float(out["infonce_EN"]) == pytest.approx((nce(2.0, [1.0, 3.0]) + nce(0.0, [1.0, 3.0])) / 2, rel=1e-6)
    assert float(out["infonce_RN"]) == pytest.approx((nce(2.0, [0.5]) + nce(0.0, [-1.0])) / 2, rel=1e-6)
    assert float(out["count_EN"]) == 2.0
    per_request = losses.make_loss("ghcl", HARD, harmonize="none", temperature=1.0)(*batch(rows))
    assert float(per_request["infonce_EN"]) == pytest.approx((nce(2.0, [1.0]) + nce(0.0, [3.0])) / 2, rel=1e-6)


def test_batch_contrasts_must_be_contrasts_and_keep_every_negative():
    with pytest.raises(ValueError, match="batch_contrasts must be among"):
        losses.GHCLLoss(negative_groups=("EN", "RN"), batch_contrasts=("GN",))
    with pytest.raises(ValueError, match="sampling='fixed'"):
        losses.GHCLLoss(batch_contrasts=("EN",), sampling="saturation")
