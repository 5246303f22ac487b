import numpy as np
import pytest
import tensorflow as tf

from hap.models import losses, transformed, training


def test_auc_matches_pair_counting_with_ties():
    pos = np.array([0.9, 0.5, 0.5])
    neg = np.array([0.5, 0.1])
    # pairs: (0.9>0.5, 0.9>0.1, 0.5=0.5 half, 0.5>0.1, 0.5=0.5 half, 0.5>0.1) = 5 / 6
    assert training.auc(pos, neg) == pytest.approx(5 / 6)
    assert training.auc(np.array([1.0]), np.array([2.0, 3.0])) == 0.0
    assert np.isnan(training.auc(np.array([]), neg))


def test_per_source_auc_contrasts_positives_with_each_source():
    g = transformed.GROUP_INDEX
    groups = np.array([g["EP"], g["EP"], g["EN"], g["RN"], g["PRN"], g["GN"]])
    scores = np.array([0.8, 0.4, 0.6, 0.3, 0.1, 0.9])
    result = training.per_source_auc(scores, groups)
    assert result["auc_EP_vs_EN"] == pytest.approx(0.5)
    assert result["auc_EP_vs_RN"] == 1.0 and result["auc_EP_vs_PRN"] == 1.0
    assert result["auc_EP_vs_GN"] == 0.0
    assert result["auc_mean"] == pytest.approx(0.625)


class _RegularisedScorer(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer="ones",
                                           kernel_regularizer=tf.keras.regularizers.L2(0.5))

    def call(self, features, training=False):
        return tf.squeeze(self.dense(features["x"][:, None]), -1)


def test_training_steps_add_the_scorers_regularisation_losses():
    """A loss with no gradient leaves only the regulariser: L2(0.5) at w = 1 is 0.5 w^2 = 0.5, its
    gradient w = 1, so one SGD(0.1) step moves w to 0.9 (a dropped self.losses leaves it at 1)."""
    model = training.RoutedTrainer(_RegularisedScorer(),
                                   lambda logits, *args, **kwargs: {"loss": 0.0 * tf.reduce_sum(logits)})
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    features = {"x": [1.0, 2.0], transformed.LABEL: [1.0, 0.0], transformed.SAMPLE_GROUP: [0, 1],
                transformed.REQUEST_KEY: [b"r", b"r"]}
    logs = model.fit(tf.data.Dataset.from_tensors(features), epochs=1, verbose=0).history
    assert logs["regularization"] == [pytest.approx(0.5)]
    assert model.scorer.dense.kernel.numpy().item() == pytest.approx(0.9)


class _CountingScorer(tf.keras.Model):
    """A linear scorer that counts how often TensorFlow traces it."""

    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1, kernel_initializer="ones")
        self.traces = 0

    def call(self, features, training=False):
        self.traces += 1
        return tf.squeeze(self.dense(features["x"]), -1)


def _bce(logits, labels, groups, ids, num_requests, update=False):
    return {"loss": tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))}


def _fit_counted(steps_per_execution, keras_loop=False):
    """Two epochs of 10 steps; with 4 steps per call each epoch ends on a call of 2, which Keras'
    data handler shortens through its steps_per_execution variable."""
    rng = np.random.default_rng(0)
    features = {"x": rng.normal(size=(70, 3)).astype("float32"), transformed.LABEL: (rng.random(70) > 0.5).astype("float32"),
                transformed.SAMPLE_GROUP: np.zeros(70, "int64"), transformed.REQUEST_KEY: np.array([b"r"] * 70)}
    model = training.RoutedTrainer(_CountingScorer(), _bce)
    if keras_loop:
        model.make_train_function = lambda force=False: tf.keras.Model.make_train_function(model, force)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), steps_per_execution=steps_per_execution)
    history = model.fit(tf.data.Dataset.from_tensor_slices(features).batch(7), epochs=2, steps_per_epoch=10,
                        verbose=0).history
    return model, history


def test_the_multi_step_train_function_traces_the_step_once_and_matches_single_steps():
    single, single_history = _fit_counted(1)
    multi, multi_history = _fit_counted(4)
    keras_multi, _ = _fit_counted(4, keras_loop=True)
    np.testing.assert_allclose(multi.scorer.dense.kernel.numpy(), single.scorer.dense.kernel.numpy(), rtol=1e-6)
    np.testing.assert_allclose(multi_history["loss"], single_history["loss"], rtol=1e-6)
    assert int(multi._train_counter.numpy()) == 20
    # Keras' own multi-step loop traces the step twice as often as one step per call does.
    assert multi.scorer.traces == single.scorer.traces < keras_multi.scorer.traces


def _probe_loss(logits, labels, groups, ids, num_requests, update=False):
    """-mean(positive logits) + mean(negative logits): its gradient w.r.t. the one weight w of
    `_RegularisedScorer` is mean(x of negatives) - mean(x of positives)."""
    positive = tf.cast(labels > 0, tf.float32)
    return {"loss": -tf.reduce_sum(logits * positive) / tf.reduce_sum(positive)
            + tf.reduce_sum(logits * (1 - positive)) / tf.reduce_sum(1 - positive)}


def _conflict_probe():
    g = transformed.GROUP_INDEX
    # EP at x = 1; EN at x = 3 (gradient 3 - 1 = +2), RN at x = -1 (gradient -2): opposed.
    return {"x": np.array([1.0, 3.0, -1.0], np.float32), transformed.LABEL: np.array([1.0, 0.0, 0.0], np.float32),
            transformed.SAMPLE_GROUP: np.array([g["EP"], g["EN"], g["RN"]]),
            transformed.REQUEST_KEY: np.array([b"r", b"r", b"r"], dtype=object)}


def test_the_conflict_probe_is_traced_once_and_measures_cosines(tmp_path):
    scorer = _RegularisedScorer()
    scorer({"x": tf.constant([1.0])})  # built, as a trained scorer is: creating variables would trace again
    conflict = training.GradientConflict(scorer, _probe_loss, _conflict_probe(), str(tmp_path), negative_groups=("EN", "RN"))
    for _ in range(3):
        result = conflict.measure()
        assert result["cos_EN_RN"] == pytest.approx(-1.0)
    assert conflict._masked_gradient.experimental_get_tracing_count() == 1


def test_the_conflict_probe_keeps_to_its_time_budget(tmp_path, monkeypatch):
    """Steps of 1 s and probes of 0.5 s under a 10% budget: after the first probe (its tracing,
    not counted), a probe runs whenever probing so far is at most 0.1 x the training so far."""
    clock = {"now": 0.0}
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock["now"])
    conflict = training.GradientConflict(_RegularisedScorer(), _probe_loss, _conflict_probe(), str(tmp_path),
                                         budget=0.1, negative_groups=("EN", "RN"))

    def measure():
        clock["now"] += 0.5
        return {"cos_EN_RN": -1.0}

    conflict.measure = measure
    for step in range(20):
        conflict.on_train_batch_begin(step)
        clock["now"] += 1.0
        conflict.on_train_batch_end(step)
    assert [h["step"] for h in conflict.history] == [0, 1, 4, 9, 14, 19]
    assert conflict.cost == {"probes": 6, "probe_seconds": 2.5, "trace_seconds": 0.5, "train_seconds": 20.0}
    # With 16 steps per call, Keras calls the hooks at each call's last step: in the second epoch
    # of 64 steps, the call of its steps 16-31 is logged at global step 64 + 31.
    conflict.set_params({"steps": 64})
    conflict.on_epoch_begin(1)
    conflict.cost["probe_seconds"] = 0.0
    conflict.on_train_batch_begin(16)
    conflict.on_train_batch_end(31)
    assert conflict.history[-1]["step"] == 95


class _TableScorer(tf.keras.Model):
    """logit = table[item] . x: the table's gradient is IndexedSlices, as an embedding's is."""

    def __init__(self):
        super().__init__()
        self.table = tf.Variable(tf.ones([3, 2]), name="table")

    def call(self, features, training=False):
        return tf.reduce_sum(tf.gather(self.table, features["item"]) * features["x"], axis=-1)


class _LinearTerms(losses.GHCLLoss):
    """GHCL's gradient rules over linear per-source terms: infonce_g = sum of g's logits - the
    positive's, so its gradient with respect to table[item] is the sum of the x of g's samples there."""

    def __call__(self, logits, labels, groups, request_ids, num_requests=None, update=True):
        out = {"bce": 0.0 * tf.reduce_sum(logits)}
        positive = tf.reduce_sum(tf.where(groups == transformed.GROUP_INDEX["EP"], logits, 0.0))
        for g in self.negative_groups:
            term = tf.reduce_sum(tf.where(groups == transformed.GROUP_INDEX[g], logits, 0.0)) - positive
            out[f"infonce_{g}"], out[f"count_{g}"] = term, tf.constant(1.0)
        out["loss"] = out["bce"] + tf.add_n([out[f"infonce_{g}"] for g in self.negative_groups])
        return out


def _fit_one_step(harmonize):
    g = transformed.GROUP_INDEX
    model = training.RoutedTrainer(_TableScorer(), _LinearTerms(("EN", "RN"), harmonize=harmonize))
    model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
    # EP on row 0 with x = 0 (no gradient); EN and RN both on row 1: gradients [1, 0] and [-1, 1].
    features = {"item": [0, 1, 1], "x": [[0.0, 0.0], [1.0, 0.0], [-1.0, 1.0]],
                transformed.LABEL: [1.0, 0.0, 0.0], transformed.SAMPLE_GROUP: [g["EP"], g["EN"], g["RN"]],
                transformed.REQUEST_KEY: [b"r", b"r", b"r"]}
    logs = model.fit(tf.data.Dataset.from_tensors(features), epochs=1, verbose=0).history
    return model.scorer.table.numpy(), logs


@pytest.mark.parametrize("harmonize, row", [
    ("none", [1.0, 0.0]),        # the plain sum [0, 1]
    ("pcgrad", [0.5, -0.5]),     # [0.5, 0.5] + [0, 1]: each projected off the other
    # norms 1 and sqrt 2, mean m = (1 + sqrt 2) / 2: m [1, 0] + (m / sqrt 2) [-1, 1]
    ("gradnorm", [1.0 - (1 + 2 ** 0.5) / 2 * (1 - 2 ** -0.5), 1.0 - (1 + 2 ** 0.5) / 2 * 2 ** -0.5]),
])
def test_per_source_step_applies_the_gradient_rule_to_sparse_gradients(harmonize, row):
    table, logs = _fit_one_step(harmonize)
    np.testing.assert_allclose(table[1], row, atol=1e-6)
    np.testing.assert_array_equal(table[[0, 2]], np.ones([2, 2]))  # rows without gradient stay
    if harmonize != "none":
        assert {"grad_weight_EN", "grad_weight_RN"} <= set(logs)


class _GraphCalls(_LinearTerms):
    """_LinearTerms that counts its calls while TensorFlow traces a graph (eager calls aside)."""

    traces = 0

    def __call__(self, *args, **kwargs):
        if not tf.executing_eagerly():
            self.traces += 1
        return super().__call__(*args, **kwargs)


@pytest.mark.parametrize("harmonize", ["ema", "gradnorm", "pcgrad"])
def test_a_step_whose_variables_exist_is_traced_once_and_trains_as_before(harmonize):
    """Variables created in a first trace make TensorFlow trace the function again; once
    create_step_variables made them (the scorer's, the optimizer's slots, a Mean per logged term,
    grad_weight_* of the gradient rules among them), the step is traced once, and its update and
    logs are those of the step that made them itself."""
    g = transformed.GROUP_INDEX
    features = {"item": [0, 1, 1], "x": [[0.5, 0.0], [1.0, 0.0], [-1.0, 1.0]],
                transformed.LABEL: [1.0, 0.0, 0.0], transformed.SAMPLE_GROUP: [g["EP"], g["EN"], g["RN"]],
                transformed.REQUEST_KEY: [b"r", b"r", b"r"]}
    results = {}
    for prepared in (False, True):
        model = training.RoutedTrainer(_TableScorer(), _GraphCalls(("EN", "RN"), harmonize=harmonize))
        model.compile(optimizer=tf.keras.optimizers.Adam(0.1), steps_per_execution=2)
        if prepared:
            model.create_step_variables({k: tf.constant(v) for k, v in features.items()})
        logs = model.fit(tf.data.Dataset.from_tensors(features).repeat(), epochs=1, steps_per_epoch=4, verbose=0).history
        results[prepared] = model.loss_fn.traces, model.scorer.table.numpy(), logs
    assert results[False][0] == 2 and results[True][0] == 1
    np.testing.assert_allclose(results[True][1], results[False][1], rtol=1e-6)
    assert results[True][2].keys() == results[False][2].keys()
    for name, values in results[False][2].items():
        np.testing.assert_allclose(results[True][2][name], values, rtol=1e-6, err_msg=name)


def test_the_predictor_is_traced_once_for_batches_of_every_size(tmp_path):
    """The validation callback scores the eval records after every epoch; a retrace per batch
    size (each batch holds whole requests, so sizes differ) would trace the scorer again."""
    from synthetic_requests import synthetic_arrays, write_records

    records = write_records(str(tmp_path), synthetic_arrays(10, seed=2), num_files=2)
    predict = training.predictor(lambda features, training: 2.0 * tf.cast(features["c_hour"], tf.float32), records)
    batch_size = lambda batch: tf.fill(tf.shape(batch["c_hour"]), tf.size(batch["c_hour"]))  # noqa: E731
    got = records.columns(("c_hour",), 3, derived={training.LOGITS: predict, "batch_size": batch_size})
    np.testing.assert_array_equal(got[training.LOGITS], 2.0 * got["c_hour"])
    assert len(set(got["batch_size"])) > 1
    assert predict.experimental_get_tracing_count() == 1
