"""The pushed cascade SavedModel, loaded as TF Serving would load it (no Python classes)."""
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from hap.data import contract as c
from hap.serving import request as rq
from hap.serving import routing
from hap.serving import warmup
from hap.serving.cascade import CascadeSettings

SIGNATURES = {"serving_default", "cascade", "light", "heavy", "item_embeddings", "score_examples",
              "transform_features"}
CASCADE_OUTPUTS = {"scores": tf.float32, "top_indices": tf.int32, "light_scores": tf.float32,
                   "heavy_scores": tf.float32, "routed": tf.bool}
DEFAULTS = CascadeSettings()


@pytest.fixture(scope="module")
def model(cascade_model):
    return tf.saved_model.load(cascade_model)


@pytest.fixture(scope="module")
def features(e2e_features):
    return e2e_features


@pytest.fixture(scope="module")
def requests(e2e_requests):
    return e2e_requests


def _call(model, signature, request):
    inputs = {k: tf.constant(v, dtype=tf.string if v.dtype == object else None) for k, v in request.items()}
    return {k: v.numpy() for k, v in model.signatures[signature](**inputs).items()}


def test_signature_names_inputs_and_outputs(model, features):
    assert set(model.signatures) == SIGNATURES
    cascade = model.signatures["cascade"]
    specs = cascade.structured_input_signature[1]
    assert set(specs) == set(features.names)
    for f in features.features:
        assert specs[f.name].dtype == (tf.float32 if f.kind == c.NUMERIC else tf.string), f.name
        assert specs[f.name].shape.as_list() == list(rq.shape_of(f)), f.name
    assert {k: v.dtype for k, v in cascade.structured_outputs.items()} == CASCADE_OUTPUTS
    items = model.signatures["item_embeddings"].structured_input_signature[1]
    assert set(items) == {f.name for f in features.features if f.role == c.ITEM}
    for name in ("score_examples", "transform_features"):
        assert set(model.signatures[name].structured_input_signature[1]) == {"examples"}
    assert set(model.signatures["score_examples"].structured_outputs) == {"light_scores", "heavy_scores"}
    transformed = model.signatures["transform_features"].structured_outputs
    assert set(transformed) == set(features.names), "serving must not need training-only columns"


def test_cascade_equals_the_routing_module_on_the_light_and_heavy_signatures(model, requests):
    policy = DEFAULTS.routing
    for request in requests:
        out = _call(model, "cascade", request)
        light = _call(model, "light", request)["scores"]
        heavy = _call(model, "heavy", request)["scores"]
        n = len(light)
        k = routing.routed_count(n, policy.fraction)
        np.testing.assert_allclose(out["light_scores"], light, rtol=1e-5, atol=1e-6)
        routed = out["routed"]
        # The default policy routes exactly the top K by light score.
        assert routed.sum() == k
        assert set(np.flatnonzero(routed)) == set(np.argsort(-light, kind="stable")[:k])
        np.testing.assert_allclose(out["heavy_scores"][routed], heavy[routed], rtol=1e-5, atol=1e-6)
        assert (out["heavy_scores"][~routed] == 0).all()
        # Routing and combination read only orders, which the sigmoid keeps: the routing module on
        # the two models' probabilities gives the signature's routed set and ranking key.
        keys, expected_routed = routing.route_request(policy, light, heavy)
        np.testing.assert_array_equal(routed, expected_routed.numpy())
        np.testing.assert_allclose(out["scores"], keys.numpy(), rtol=0, atol=1e-7)
        top = out["top_indices"]
        assert len(top) == min(DEFAULTS.k_out, n)
        np.testing.assert_allclose(np.sort(out["scores"]), (np.arange(n) + 1) / n, rtol=1e-6)  # one key per rank
        np.testing.assert_array_equal(out["scores"][top], np.sort(out["scores"])[::-1][:len(top)])
        assert routed[top[:k]].all()


def test_score_examples_agree_with_the_request_signatures(model, requests, features):
    request = requests[0]
    examples = np.array(rq.RequestLayout(features).to_examples(request), object)
    scored = _call(model, "score_examples", {"examples": examples})
    np.testing.assert_allclose(scored["light_scores"], _call(model, "light", request)["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scored["heavy_scores"], _call(model, "heavy", request)["scores"], rtol=1e-5, atol=1e-6)


def test_item_embeddings_depend_on_the_item_alone(model, requests, features):
    item_names = [f.name for f in features.features if f.role == c.ITEM]
    first, second = ({k: r[k] for k in item_names} for r in requests[:2])
    full = _call(model, "item_embeddings", first)["embeddings"]
    assert full.shape[0] == len(first["item_id"]) and full.shape[1] > 1
    # Embedding a subset, in another order, gives the same rows: no batch or user dependence.
    rows = np.array([3, 0, 2])
    subset = _call(model, "item_embeddings", {k: v[rows] for k, v in first.items()})["embeddings"]
    np.testing.assert_allclose(subset, full[rows], rtol=1e-5, atol=1e-6)
    other = _call(model, "item_embeddings", second)["embeddings"]
    assert not np.allclose(other[: len(rows)], full[rows])


def test_missing_values_and_empty_histories_are_served(model, requests, features):
    request = dict(requests[0])
    for f in features.features:
        if f.kind == c.SEQUENCE and rq.is_request_level(f):
            request[f.name] = np.zeros((1, 0), object)          # an empty history, L = 0
        elif f.kind == c.NUMERIC:
            values = request[f.name].copy()
            values[::2] = np.nan
            request[f.name] = values
        elif f.kind == c.CATEGORICAL and not rq.is_request_level(f) and f.name != "item_id":
            values = request[f.name].copy()
            values[1::2] = rq.MISSING_TOKEN
            request[f.name] = values
    out = _call(model, "cascade", request)
    assert np.isfinite(out["scores"]).all() and out["routed"].any()
    assert not np.allclose(out["light_scores"], _call(model, "cascade", requests[0])["light_scores"])


@pytest.mark.parametrize("problem, message", [
    ("no candidates", "N = 0"),
    ("too many candidates", "at most 5000"),
    ("two user rows", "one row per request"),
    ("ragged candidates", "needs N"),
    ("an infinite user numeric", "is infinite"),
    ("an infinite item numeric", "is infinite"),
    ("an absurd user numeric", "beyond"),   # 1e30: finite, but beyond the contract's |x| <= 1e18
    ("an absurd item numeric", "beyond"),
])
def test_malformed_requests_fail_with_a_named_problem(model, features, problem, message):
    n = {"no candidates": 0, "too many candidates": DEFAULTS.max_candidates + 1}.get(problem, 4)
    request = rq.RequestLayout(features).missing(n)
    if problem == "two user rows":
        request["user_id"] = np.array(["1", "2"], object)
    if problem == "ragged candidates":
        name = next(f.name for f in features.features if f.role == c.ITEM and f.name != "item_id")
        request[name] = request[name][:2]
    if problem.startswith(("an infinite", "an absurd")):
        level = rq.is_request_level if "user" in problem else (lambda f: not rq.is_request_level(f))
        name = next(f.name for f in features.features if f.kind == c.NUMERIC and level(f))
        request[name] = request[name].copy()
        request[name][0] = np.inf if "infinite" in problem else 1e30
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _call(model, "cascade", request)


def test_warmup_requests_replay_against_the_model(model, cascade_model):
    path = os.path.join(cascade_model, "assets.extra", warmup.WARMUP_FILE)
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert {log.predict_log.request.model_spec.signature_name for log in logs} == set(model.signatures)
    sizes = set()
    for log in logs:
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = _call(model, request.model_spec.signature_name, inputs)
        sizes.add(len(next(iter(out.values()))))
    assert sizes == set(warmup.WARMUP_SIZES)
