import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from hap.data import contract, simulator
from hap.models import heavy, layers, light
from hap.models import transformed

VOCAB = 50
BATCH = 16


def _model_inputs(features: contract.FeatureSet) -> transformed.ModelInputs:
    names = {transformed.vocabulary_name(f) for f in features.features if f.kind != contract.NUMERIC}
    return transformed.ModelInputs(features, {n: VOCAB for n in names})


def _column(feature: contract.Feature, rng: np.random.Generator) -> tf.Tensor:
    if feature.kind == contract.CATEGORICAL:
        return tf.constant(rng.integers(0, VOCAB, BATCH), tf.int64)
    if feature.kind == contract.NUMERIC:
        return tf.constant(rng.normal(size=BATCH), tf.float32)
    # Random lengths, padded at the end (most recent first); row 0 is a new user's empty history.
    ids = rng.integers(1, VOCAB, (BATCH, feature.max_len))
    lengths = rng.integers(0, feature.max_len + 1, BATCH)
    lengths[0] = 0
    ids[np.arange(feature.max_len) >= lengths[:, None]] = transformed.PAD
    return tf.constant(ids, tf.int64)


def _batch(features: contract.FeatureSet, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    batch = {f.name: _column(f, rng) for f in features.features}
    # Training-only keys the models must ignore.
    batch[transformed.LABEL] = tf.constant(rng.integers(0, 2, BATCH), tf.float32)
    batch[transformed.SAMPLE_GROUP] = tf.constant(rng.integers(0, 5, BATCH), tf.int64)
    batch[transformed.REQUEST_KEY] = tf.constant([f"r{i // 4}" for i in range(BATCH)])
    return batch


def _redraw(batch: dict, features, seed: int) -> dict:
    """`batch` with the given features drawn anew."""
    rng = np.random.default_rng(seed)
    return {**batch, **{f.name: _column(f, rng) for f in features}}


@pytest.fixture(scope="module")
def model_inputs():
    return _model_inputs(simulator.FEATURE_SET)


@pytest.fixture(scope="module")
def batch():
    return _batch(simulator.FEATURE_SET)


@pytest.fixture(scope="module")
def light_model(model_inputs):
    return light.LightModel(model_inputs)


@pytest.fixture(scope="module")
def heavy_model(model_inputs):
    return heavy.HeavyModel(model_inputs)


def test_output_and_embedding_shapes(light_model, heavy_model, batch):
    d = light_model.config.output_dim
    for logits in (light_model(batch), heavy_model(batch)):
        assert logits.shape == (BATCH,) and logits.dtype == tf.float32
        assert np.isfinite(logits.numpy()).all()
    assert light_model.user_embedding(batch).shape == (BATCH, d)
    assert light_model.item_embedding(batch).shape == (BATCH, d)


def test_item_embedding_reads_item_features_only(light_model, model_inputs, batch):
    v = light_model.item_embedding(batch).numpy()
    others = model_inputs.select((contract.USER, contract.CONTEXT, contract.CROSS))
    np.testing.assert_array_equal(light_model.item_embedding(_redraw(batch, others, seed=1)).numpy(), v)
    # Precomputing the pool's embeddings needs no user at all.
    items_only = {f.name: batch[f.name] for f in model_inputs.item_side}
    np.testing.assert_array_equal(light_model.item_embedding(items_only).numpy(), v)


def test_user_embedding_reads_user_and_context_features_only(light_model, model_inputs, batch):
    u = light_model.user_embedding(batch).numpy()
    others = model_inputs.select((contract.ITEM, contract.CROSS))
    np.testing.assert_array_equal(light_model.user_embedding(_redraw(batch, others, seed=1)).numpy(), u)
    user_only = {f.name: batch[f.name] for f in model_inputs.user_side}
    np.testing.assert_array_equal(light_model.user_embedding(user_only).numpy(), u)


def test_light_logits_are_the_head_over_the_tower_embeddings(light_model, batch):
    u, v = light_model.user_embedding(batch), light_model.item_embedding(batch)
    np.testing.assert_allclose(light_model(batch).numpy(), light_model.score_from_embeddings(u, v).numpy(), rtol=1e-6)


def test_the_router_learns_without_moving_the_light_scores(light_model, batch):
    """Its loss's gradient reaches the router's weights only; a step on it leaves every light
    logit as it was and lowers the loss."""
    from hap.models import difficulty_router

    batch = {**batch, transformed.DIFFICULTY: tf.constant(np.linspace(0.0, 1.0, BATCH), tf.float32)}
    with tf.GradientTape() as tape:
        loss = difficulty_router.router_bce(light_model, batch)
    variables = light_model.trainable_variables
    grads = dict(zip([v.name for v in variables], tape.gradient(loss, variables)))
    router = {v.name for v in light_model.router.trainable_variables}
    assert router and all(grads[n] is not None for n in router)
    assert all(g is None for n, g in grads.items() if n not in router)
    logits = light_model(batch).numpy()
    saved = [v.numpy() for v in light_model.router.trainable_variables]
    optimizer = tf.keras.optimizers.SGD(0.5)
    optimizer.apply_gradients(zip([grads[v.name] for v in light_model.router.trainable_variables],
                                  light_model.router.trainable_variables))
    assert float(difficulty_router.router_bce(light_model, batch)) < float(loss)
    np.testing.assert_array_equal(light_model(batch).numpy(), logits)
    for v, value in zip(light_model.router.trainable_variables, saved):  # the module fixture stays as it was
        v.assign(value)


def test_one_user_embedding_scores_many_items(light_model, batch):
    u, v = light_model.user_embedding(batch)[:1], light_model.item_embedding(batch)
    tiled = tf.tile(u, [BATCH, 1])
    np.testing.assert_allclose(
        light_model.score_from_embeddings(u, v).numpy(),
        light_model.score_from_embeddings(tiled, v).numpy(), rtol=1e-6)


def test_cross_features_reach_the_heavy_model_only(light_model, heavy_model, model_inputs, batch):
    changed = _redraw(batch, model_inputs.select((contract.CROSS,)), seed=2)
    assert not np.allclose(heavy_model(changed).numpy(), heavy_model(batch).numpy())
    np.testing.assert_array_equal(light_model(changed).numpy(), light_model(batch).numpy())
    assert not any(isinstance(m, layers.TargetAttention) for m in light_model.submodules)


def test_sequence_shares_its_target_table(model_inputs, batch):
    embed = layers.FeatureEmbedding(model_inputs, model_inputs.all_features, dim=8)
    assert "vocab_item_id" in embed.tables and "vocab_u_click_seq" not in embed.tables
    history = batch["u_click_seq"].numpy()
    history[:, 0] = batch["item_id"].numpy()
    out = embed({**batch, "u_click_seq": tf.constant(history)})
    np.testing.assert_array_equal(out["sequence"]["u_click_seq"][:, 0].numpy(), out["categorical"]["item_id"].numpy())


def test_heavy_attends_over_histories_with_a_target_only(heavy_model, model_inputs):
    targeted = {f.name for f in model_inputs.all_features if f.kind == contract.SEQUENCE and f.target}
    assert set(heavy_model.attention) == targeted == {"u_click_seq", "u_cat_seq"}
    assert not heavy_model.pools


def test_heavy_is_deeper_than_the_light_head_and_crosses_features(light_model, heavy_model):
    n, m = len(heavy_model.deep.dense_layers), len(light_model.head.dense_layers)
    assert n == len(heavy.HeavyConfig().deep_units) == 4 and m == len(light.LightConfig().head_units) == 2
    assert n > m
    crosses = [s for s in heavy_model.submodules if isinstance(s, tfrs.layers.dcn.Cross)]
    assert len(crosses) == heavy_model.config.cross_layers == 2


def _attention_inputs(seed=0, batch=4, length=6, dim=8):
    rng = np.random.default_rng(seed)
    query = tf.constant(rng.normal(size=(batch, dim)), tf.float32)
    keys = rng.normal(size=(batch, length, dim)).astype(np.float32)
    mask = np.arange(length)[None, :] < np.array([0, 1, 3, length])[:, None]
    return query, keys, tf.constant(mask)


def test_target_attention_of_an_empty_history_is_zero():
    attention = layers.TargetAttention()
    query, keys, mask = _attention_inputs()
    keys = tf.constant(keys)
    with tf.GradientTape() as tape:
        tape.watch(keys)
        out = attention(query, keys, mask)
    grad = tape.gradient(out, keys)
    np.testing.assert_array_equal(out[0].numpy(), 0.0)
    assert np.isfinite(out.numpy()).all() and np.isfinite(grad.numpy()).all()


def test_target_attention_ignores_padded_positions():
    attention = layers.TargetAttention()
    query, keys, mask = _attention_inputs()
    garbage = np.where(mask.numpy()[..., None], keys, 1e3 * np.ones_like(keys))
    out = attention(query, tf.constant(keys), mask)
    np.testing.assert_array_equal(attention(query, tf.constant(garbage), mask).numpy(), out.numpy())
    weights = attention.attention_weights(query, tf.constant(keys), mask).numpy()
    np.testing.assert_array_equal(weights[~mask.numpy()], 0.0)
    np.testing.assert_allclose(weights.sum(axis=1), [0.0, 1.0, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("hidden_units", [(), (32,), (16, 8)])
def test_attention_over_one_shared_history_equals_attention_over_its_copies(hidden_units):
    attention = layers.TargetAttention(hidden_units)
    query, keys, _ = _attention_inputs()
    rows = query.shape[0]
    for length in (0, 2, keys.shape[1]):  # an empty history, a short one, a full one
        mask = tf.constant(np.arange(keys.shape[1])[None, :] < length)
        shared = tf.constant(keys[:1])
        repeated = attention(query, tf.repeat(shared, rows, axis=0), tf.repeat(mask, rows, axis=0)).numpy()
        np.testing.assert_allclose(attention.attend_shared(query, shared, mask).numpy(), repeated, rtol=1e-5, atol=1e-6)
        if length == 0:
            np.testing.assert_array_equal(repeated, 0.0)


@pytest.mark.parametrize("name", ["simulator", "categorical_only"])
def test_heavy_logits_of_one_request_equal_those_of_its_user_row_beside_each_candidate(name):
    features = (simulator.FEATURE_SET if name == "simulator"
                else contract.parse_features({"version": 1, "features": SMALL_FEATURE_SETS[name]}, name))
    model = heavy.HeavyModel(_model_inputs(features))
    batch = _batch(features, seed=5)
    model(batch)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # embeddings start at zero: random weights make every path count
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype(np.float32))
    user = {f.name: batch[f.name][3:4] for f in features.features if f.role in (contract.USER, contract.CONTEXT)}
    candidates = {f.name: batch[f.name] for f in features.features if f.name not in user}
    beside_each = model({**candidates, **{n: tf.repeat(v, BATCH, axis=0) for n, v in user.items()}}).numpy()
    np.testing.assert_allclose(model.logits_for_one_request(user, candidates).numpy(), beside_each, rtol=1e-5, atol=1e-5)
    assert np.std(beside_each) > 1e-3  # the candidates are told apart


def test_masked_mean_pool_averages_real_positions_only():
    _, keys, mask = _attention_inputs()
    pooled = layers.MaskedMeanPool()(tf.constant(keys), mask).numpy()
    np.testing.assert_array_equal(pooled[0], 0.0)
    np.testing.assert_allclose(pooled[1], keys[1, 0], rtol=1e-6)
    np.testing.assert_allclose(pooled[2], keys[2, :3].mean(axis=0), rtol=1e-6)


SMALL_FEATURE_SETS = {
    # No sequences, no cross, no context, no numeric user feature.
    "flat": [{"name": "u_tier", "role": "user", "kind": "categorical"},
             {"name": "i_score", "role": "item", "kind": "numeric"}],
    # No numeric features at all; a history without target has its own table and is pooled.
    "categorical_only": [{"name": "u_tags", "role": "user", "kind": "sequence", "max_len": 5},
                         {"name": "c_slot", "role": "context", "kind": "categorical"}],
}


@pytest.mark.parametrize("name", sorted(SMALL_FEATURE_SETS))
def test_models_build_on_feature_sets_with_empty_groups(name):
    features = contract.parse_features({"version": 1, "features": SMALL_FEATURE_SETS[name]}, name)
    model_inputs = _model_inputs(features)
    batch = _batch(features)
    light_model, heavy_model = light.LightModel(model_inputs), heavy.HeavyModel(model_inputs)
    for logits in (light_model(batch), heavy_model(batch)):
        assert logits.shape == (BATCH,) and np.isfinite(logits.numpy()).all()
    # The listed user feature, a plain categorical or a history pooled for want of a target,
    # reaches both models once they have learnt something: their embeddings start at zero, and
    # on "categorical_only" nothing but embeddings feeds the networks (layers.RELU_BIAS).
    changed = _redraw(batch, [model_inputs.features.listed[0]], seed=3)
    for model in (light_model, heavy_model):
        _fit_a_little(model, batch)
        assert not np.allclose(model(changed).numpy(), model(batch).numpy())


def _fit_a_little(model, batch, steps: int = 3):
    optimizer = tf.keras.optimizers.Adam(0.01)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(batch[transformed.LABEL], model(batch)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))


@pytest.mark.parametrize("init", layers.EMBEDDING_INITS)
def test_embedding_tables_start_as_their_init_says(init, model_inputs):
    tables = layers.embedding_tables(model_inputs, model_inputs.all_features, 8, init)
    for table in tables.values():
        rows = table(tf.range(VOCAB)).numpy()
        if init == "zeros":
            np.testing.assert_array_equal(rows, 0.0)
        else:
            assert 0 < np.abs(rows).max() <= 0.05


@pytest.mark.parametrize("config", [light.LightConfig, heavy.HeavyConfig])
def test_an_unknown_embedding_init_is_refused(config):
    with pytest.raises(ValueError, match="embedding_init must be one of"):
        config(embedding_init="glorot")


@pytest.mark.parametrize("kind", ["light", "heavy"])
def test_save_and_reload_give_the_same_logits(kind, light_model, heavy_model, model_inputs, batch, tmp_path):
    model = {"light": light_model, "heavy": heavy_model}[kind]
    expected = model(batch).numpy()
    path = str(tmp_path / kind)
    model.save(path, save_format="tf")
    inputs = {f.name: batch[f.name] for f in model_inputs.all_features if f.name in model.feature_names}
    # Without the Python class, as TF Serving sees it: the signature takes the features only.
    np.testing.assert_allclose(tf.saved_model.load(path)(inputs).numpy(), expected, rtol=1e-5, atol=1e-6)
    rebuilt = tf.keras.models.load_model(path)
    assert type(rebuilt) is type(model)
    np.testing.assert_allclose(rebuilt(batch).numpy(), expected, rtol=1e-5, atol=1e-6)
    if kind == "light":
        np.testing.assert_allclose(rebuilt.item_embedding(batch).numpy(), model.item_embedding(batch).numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rebuilt.router_logits(batch).numpy(), model.router_logits(batch).numpy(),
                                   rtol=1e-5, atol=1e-6)
