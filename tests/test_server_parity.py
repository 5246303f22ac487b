"""Status-code parity with TF Serving: one case per row of the table in docs/serving.md ("Status
codes"), each a request class sent to `hap serve` over gRPC or REST, checked for the code the
table gives ours and for a message naming the field or input at fault; none may log a traceback.
TF Serving's column comes from its 2.16.1 source (the files the docs table cites); where it
differs from ours the docs say why (ours refuses what TF Serving lets through).

Also: the data contract's bound on numerics (closed form, then served), and a model config
reloaded over ModelService.HandleReloadConfigRequest."""
import dataclasses
import json
import logging
import os
import shutil
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2,
                                     model_management_pb2, model_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2, session_service_pb2)
from tensorflow_serving.config import model_server_config_pb2

from hap.data import contract as c
from hap.serving import request as rq
from hap.serving import server

import test_server

# Seconds each: servers in subprocesses, subprocess training, or TensorFlow Transform runs.
pytestmark = pytest.mark.slow

base_path = test_server.base_path
good_request = test_server.good_request

MAX_MESSAGE_BYTES = 2 * 1024 * 1024
OK, INVALID, NOT_FOUND, PRECONDITION, UNIMPLEMENTED, EXHAUSTED = (
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED)
CLASSIFY, REGRESS, PREDICT_METHOD = "tensorflow/serving/classify", "tensorflow/serving/regress", "tensorflow/serving/predict"


@pytest.fixture(scope="module")
def running(base_path):
    """Version 1 of the cascade, labelled "stable", over gRPC and REST."""
    policy = server.VersionPolicy(specific=server.VersionPolicy.Specific(versions=[1]))
    running = server.start(base_path, "hap", port=0, rest_api_port=0, poll_seconds=60, version_policy=policy,
                           version_labels={"stable": 1}, max_message_bytes=MAX_MESSAGE_BYTES)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(running):
    return grpc.insecure_channel(f"127.0.0.1:{running.port}",
                                 options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES)])


@dataclasses.dataclass(frozen=True)
class Names:
    """The inputs the cases break: one of each kind and role."""

    user: str            # a user categorical, [1]
    user_numeric: str    # [1]
    item_numeric: str    # [N]
    sequence: str        # a user sequence, [1, L]
    layout: rq.RequestLayout


@pytest.fixture(scope="module")
def names(e2e_features):
    features = e2e_features.features
    return Names(
        user=next(f.name for f in features if f.role == c.USER and f.kind == c.CATEGORICAL),
        user_numeric=next(f.name for f in features if f.role == c.USER and f.kind == c.NUMERIC),
        item_numeric=next(f.name for f in features if f.role == c.ITEM and f.kind == c.NUMERIC),
        sequence=next(f.name for f in features if f.role == c.USER and f.kind == c.SEQUENCE),
        layout=rq.RequestLayout(e2e_features))


# -- the cases --------------------------------------------------------------------------------

def _predict(good: dict, change=None, **inputs) -> predict_pb2.PredictRequest:
    """The good cascade request with `inputs` replaced (None: left out), then `change` applied."""
    request = rq.predict_request("hap", "cascade", {k: v for k, v in {**good, **inputs}.items() if v is not None})
    if change is not None:
        change(request)
    return request


def _set(**fields):
    def change(request):
        for path, value in fields.items():
            *parents, leaf = path.split("__")
            message = request
            for parent in parents:
                message = getattr(message, parent)
            if isinstance(value, list):
                getattr(message, leaf).extend(value)
            else:
                setattr(message, leaf, value)
    return change


def _tensor_field(name: str, **fields):
    def change(request):
        for field, value in fields.items():
            if field == "rows":
                request.inputs[name].tensor_shape.dim[0].size = value
            else:
                setattr(request.inputs[name], field, value)
    return change


def _content(name: str, extra_bytes: int):
    """The input's values packed in tensor_content, `extra_bytes` more than its shape holds."""
    def change(request):
        proto = request.inputs[name]
        values = tf.make_ndarray(proto)
        packed = tf.make_tensor_proto(values)
        packed.tensor_content = values.tobytes() + b"\0" * extra_bytes
        del packed.float_val[:]
        proto.CopyFrom(packed)
    return change


def _spec(**fields) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(**{"name": "hap", **fields})


def _metadata(**fields):
    return get_model_metadata_pb2.GetModelMetadataRequest(**{"model_spec": _spec(), "metadata_field": ["signature_def"],
                                                             **fields})


def _task(method_name: str, **spec) -> inference_pb2.InferenceTask:
    return inference_pb2.InferenceTask(model_spec=_spec(**spec), method_name=method_name)


def _reload(*configs) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    if configs:
        request.config.model_config_list.config.extend(configs)
    return request


def _model_config(base: str, name: str = "hap", labels: dict | None = None, versions=(1,)):
    config = model_server_config_pb2.ModelConfig(name=name, base_path=base, model_platform="tensorflow")
    config.model_version_policy.specific.versions.extend(versions)
    for label, version in (labels or {}).items():
        config.version_labels[label] = version
    return config


@dataclasses.dataclass(frozen=True)
class Case:
    """A request class: how to send it, TF Serving's code, ours, and words our message must
    contain (None: the name of the input `names` gives under that attribute)."""

    method: str          # PredictionService or ModelService method, SessionRun, or REST
    build: object        # (good request dict, Names, base path) -> request proto, or (verb, path, body) for REST
    tf_serving: object   # grpc.StatusCode, or an HTTP status for REST
    ours: object
    words: tuple = ()
    input_attr: str | None = None  # our message names this input of Names too


def _p(build, tf_code, ours, *words, input_attr=None) -> Case:
    return Case("Predict", build, tf_code, ours, words, input_attr)


CASES = {
    # -- Predict: the model and version (server_core.cc, basic_manager.cc, predict_impl.cc)
    "empty request": _p(lambda g, n, b: predict_pb2.PredictRequest(), INVALID, INVALID, "model_spec"),
    "model_spec without a name": _p(lambda g, n, b: _predict(g, _set(model_spec__name="")), INVALID, INVALID,
                                    "model_spec.name"),
    "unknown model name": _p(lambda g, n, b: _predict(g, _set(model_spec__name="rank")), NOT_FOUND, NOT_FOUND,
                             "'rank'"),
    "unknown version": _p(lambda g, n, b: _predict(g, _set(model_spec__version__value=7)), NOT_FOUND, NOT_FOUND,
                          "version 7"),
    "unknown version_label": _p(lambda g, n, b: _predict(g, _set(model_spec__version_label="nightly")), INVALID,
                                INVALID, "'nightly'"),
    # -- Predict: signature, outputs, inputs (predict_util.cc, tensorflow/cc/saved_model/util.cc)
    "unknown signature": _p(lambda g, n, b: _predict(g, _set(model_spec__signature_name="rank_everything")),
                            PRECONDITION, PRECONDITION, "'rank_everything'"),
    "duplicate output_filter": _p(lambda g, n, b: _predict(g, _set(output_filter=["scores", "scores"])), INVALID,
                                  INVALID, "output_filter", "'scores'"),
    "unknown output_filter key": _p(lambda g, n, b: _predict(g, _set(output_filter=["score"])), INVALID, INVALID,
                                    "output_filter", "'score'"),
    "no inputs": _p(lambda g, n, b: _predict({}), INVALID, INVALID, "missing input(s)", "item_id"),
    "missing input": _p(lambda g, n, b: _predict(g, item_id=None), INVALID, INVALID, "item_id"),
    "unknown input": _p(lambda g, n, b: _predict(g, u_favourite_colour=np.array(["red"], object)), INVALID, INVALID,
                        "u_favourite_colour"),
    "wrong dtype": _p(lambda g, n, b: _predict(g, **{n.item_numeric: g[n.item_numeric].astype(str).astype(object)}),
                      INVALID, INVALID, "dtype", input_attr="item_numeric"),
    "no dtype (DT_INVALID)": _p(lambda g, n, b: _predict(g, _tensor_field(n.item_numeric, dtype=0)), INVALID,
                                INVALID, "no dtype", input_attr="item_numeric"),
    "unknown dtype enum": _p(lambda g, n, b: _predict(g, _tensor_field(n.item_numeric, dtype=999)), INVALID,
                             INVALID, "999", input_attr="item_numeric"),
    "negative dimension": _p(lambda g, n, b: _predict(g, _tensor_field(n.user, rows=-1)), INVALID, INVALID,
                             "negative dimension", input_attr="user"),
    "declared shape over the values sent": _p(lambda g, n, b: _predict(g, _tensor_field(n.user, rows=10_000_000)),
                                              INVALID, INVALID, "holds 10000000 values", input_attr="user"),
    "declared shape under the values sent": _p(
        lambda g, n, b: _predict(g, _tensor_field(n.user_numeric, rows=1),
                                 **{n.user_numeric: np.array([1.0, 2.0], np.float32)}),
        OK, INVALID, "the request carries 2", input_attr="user_numeric"),
    "tensor_content of the wrong size": _p(lambda g, n, b: _predict(g, _content(n.item_numeric, 2)), INVALID,
                                           INVALID, input_attr="item_numeric"),
    "wrong shape (a user feature with 3 rows)": _p(lambda g, n, b: _predict(g, **{n.user: np.repeat(g[n.user], 3)}),
                                                   INVALID, INVALID, "expected shape", input_attr="user"),
    "wrong rank": _p(lambda g, n, b: _predict(g, **{n.sequence: g[n.sequence][0]}), INVALID, INVALID,
                     "expected shape", input_attr="sequence"),
    # -- Predict: what the cascade graph checks (serving/cascade.py), under TF Serving too
    "no candidates (N = 0)": _p(lambda g, n, b: _predict(n.layout.missing(0)), INVALID, INVALID, "N = 0"),
    "too many rows (N = 5001)": _p(lambda g, n, b: _predict(n.layout.missing(5001)), INVALID, INVALID,
                                   "N must be at most 5000"),
    "item features of different lengths": _p(lambda g, n, b: _predict(g, **{n.item_numeric: g[n.item_numeric][:-1]}),
                                             INVALID, INVALID, input_attr="item_numeric"),
    "infinite numeric": _p(lambda g, n, b: _predict(g, **{n.user_numeric: np.array([np.inf], np.float32)}), INVALID,
                           INVALID, "infinite", input_attr="user_numeric"),
    "absurd finite numeric (1e30)": _p(
        lambda g, n, b: _predict(g, **{n.item_numeric: np.where(np.arange(len(g[n.item_numeric])) == 1, 1e30,
                                                                g[n.item_numeric]).astype(np.float32)}),
        OK, INVALID, "at [1]", "1e18", input_attr="item_numeric"),
    "NaN numeric (the missing value)": _p(
        lambda g, n, b: _predict(g, **{n.user_numeric: np.array([np.nan], np.float32)}), OK, OK),
    "message over the size limit": _p(lambda g, n, b: _predict(g, item_id=np.array(
        ["x" * MAX_MESSAGE_BYTES] + list(g["item_id"][1:]), object)), EXHAUSTED, EXHAUSTED),
    # -- GetModelMetadata (get_model_metadata_impl.cc)
    "metadata: no model_spec": Case("GetModelMetadata", lambda g, n, b: get_model_metadata_pb2.GetModelMetadataRequest(
        metadata_field=["signature_def"]), INVALID, INVALID, ("model_spec",)),
    "metadata: no metadata_field": Case("GetModelMetadata", lambda g, n, b: _metadata(metadata_field=[]), INVALID,
                                        INVALID, ("metadata_field",)),
    "metadata: unsupported metadata_field": Case("GetModelMetadata", lambda g, n, b: _metadata(
        metadata_field=["signature_def", "saved_model_tags"]), INVALID, INVALID, ("'saved_model_tags'",)),
    "metadata: unknown model": Case("GetModelMetadata", lambda g, n, b: _metadata(model_spec=_spec(name="rank")),
                                    NOT_FOUND, NOT_FOUND, ("'rank'",)),
    "metadata: unknown version_label": Case("GetModelMetadata", lambda g, n, b: _metadata(
        model_spec=_spec(version_label="nightly")), INVALID, INVALID, ("'nightly'",)),
    # -- GetModelStatus (get_model_status_impl.cc)
    "status: no model_spec": Case("GetModelStatus", lambda g, n, b: get_model_status_pb2.GetModelStatusRequest(),
                                  INVALID, INVALID, ("model_spec",)),
    "status: unknown model": Case("GetModelStatus", lambda g, n, b: get_model_status_pb2.GetModelStatusRequest(
        model_spec=_spec(name="rank")), NOT_FOUND, NOT_FOUND, ("'rank'",)),
    "status: unknown version": Case("GetModelStatus", lambda g, n, b: get_model_status_pb2.GetModelStatusRequest(
        model_spec=_spec(version=dict(value=7))), NOT_FOUND, NOT_FOUND, ("version 7",)),
    "status: any version_label (not resolved: every version)": Case(
        "GetModelStatus", lambda g, n, b: get_model_status_pb2.GetModelStatusRequest(
            model_spec=_spec(version_label="nightly")), OK, OK),
    # -- Classify, Regress (classification_service.cc, classifier.cc, regressor.cc)
    "classify: no model_spec": Case("Classify", lambda g, n, b: classification_pb2.ClassificationRequest(), INVALID,
                                    INVALID, ("model_spec",)),
    "classify: unknown model": Case("Classify", lambda g, n, b: classification_pb2.ClassificationRequest(
        model_spec=_spec(name="rank")), NOT_FOUND, NOT_FOUND, ("'rank'",)),
    "classify: the cascade (serving_default)": Case("Classify", lambda g, n, b: classification_pb2.ClassificationRequest(
        model_spec=_spec()), INVALID, INVALID, ("'serving_default'", "inputs")),
    "classify: score_examples (input 'examples')": Case(
        "Classify", lambda g, n, b: classification_pb2.ClassificationRequest(model_spec=_spec(
            signature_name="score_examples")), INVALID, INVALID, ("'score_examples'", "'examples'")),
    "classify: unknown signature": Case("Classify", lambda g, n, b: classification_pb2.ClassificationRequest(
        model_spec=_spec(signature_name="rank_everything")), INVALID, INVALID, ("'rank_everything'",)),
    "regress: the cascade (serving_default)": Case("Regress", lambda g, n, b: regression_pb2.RegressionRequest(
        model_spec=_spec()), INVALID, INVALID, ("'serving_default'", "inputs")),
    "regress: score_examples (two outputs)": Case("Regress", lambda g, n, b: regression_pb2.RegressionRequest(
        model_spec=_spec(signature_name="score_examples")), INVALID, INVALID, ("'score_examples'", "2 outputs")),
    # -- MultiInference (multi_inference.cc, multi_inference_helper.cc)
    "multi-inference: no tasks": Case("MultiInference", lambda g, n, b: inference_pb2.MultiInferenceRequest(),
                                      INVALID, INVALID, ("tasks",)),
    "multi-inference: a predict task": Case("MultiInference", lambda g, n, b: inference_pb2.MultiInferenceRequest(
        tasks=[_task(PREDICT_METHOD)]), UNIMPLEMENTED, UNIMPLEMENTED, ("tasks[0].method_name", PREDICT_METHOD)),
    "multi-inference: a classify task on the cascade": Case(
        "MultiInference", lambda g, n, b: inference_pb2.MultiInferenceRequest(tasks=[_task(CLASSIFY)]),
        INVALID, INVALID, ("tasks[0]", "'serving_default'")),
    "multi-inference: unknown model": Case("MultiInference", lambda g, n, b: inference_pb2.MultiInferenceRequest(
        tasks=[_task(CLASSIFY, name="rank")]), NOT_FOUND, NOT_FOUND, ("'rank'",)),
    # -- HandleReloadConfigRequest (model_service_impl.cc, server_core.cc)
    "reload: no model_config_list": Case("HandleReloadConfigRequest", lambda g, n, b: _reload(), INVALID, INVALID,
                                         ("model_config_list",)),
    "reload: two models": Case("HandleReloadConfigRequest", lambda g, n, b: _reload(
        _model_config(b), _model_config(b, name="rank")), OK, UNIMPLEMENTED, ("lists 2 models",)),
    "reload: a label on a version not available": Case("HandleReloadConfigRequest", lambda g, n, b: _reload(
        _model_config(b, labels={"stable": 1, "canary": 2}, versions=(1, 2))), PRECONDITION, PRECONDITION,
        ("'canary'",)),
    # -- a service TF Serving does not register
    "SessionService.SessionRun": Case("SessionRun", lambda g, n, b: session_service_pb2.SessionRunRequest(),
                                      UNIMPLEMENTED, UNIMPLEMENTED),
    # -- REST (http_rest_api_handler.cc, json_tensor.cc): HTTP statuses
    "REST: unknown model": Case("REST", lambda g, n, b: ("GET", "/v1/models/rank/metadata", None), 404, 404, ("'rank'",)),
    "REST: unknown version label": Case("REST", lambda g, n, b: ("POST", "/v1/models/hap/labels/nightly:predict",
                                                                 {"inputs": _columns(g)}), 400, 400, ("'nightly'",)),
    "REST: unknown signature": Case("REST", lambda g, n, b: ("POST", "/v1/models/hap:predict", {
        "signature_name": "rank_everything", "inputs": _columns(g)}), 400, 400, ("'rank_everything'",)),
    "REST: a string for a float": Case("REST", lambda g, n, b: ("POST", "/v1/models/hap:predict", {
        "inputs": {**_columns(g), n.item_numeric: ["x"] * len(g[n.item_numeric])}}), 400, 400, ("expected a number",),
        "item_numeric"),
    "REST: absurd finite numeric (1e30)": Case("REST", lambda g, n, b: ("POST", "/v1/models/hap:predict", {
        "inputs": {**_columns(g), n.user_numeric: [1e30]}}), 200, 400, ("1e18",), "user_numeric"),
    "REST: unknown key in the body": Case("REST", lambda g, n, b: ("POST", "/v1/models/hap:predict", {
        "inputs": _columns(g), "output_filter": ["scores"]}), 200, 400, ("'output_filter'",)),
    "REST: classify on the cascade": Case("REST", lambda g, n, b: ("POST", "/v1/models/hap:classify", {
        "examples": [{"item_id": "1", "i_age_hours": 2.5}]}), 400, 400, ("'serving_default'",)),
    "REST: regress on score_examples": Case("REST", lambda g, n, b: ("POST", "/v1/models/hap:regress", {
        "signature_name": "score_examples", "examples": [{"item_id": "1"}]}), 400, 400, ("'score_examples'",)),
    "REST: classify without examples": Case("REST", lambda g, n, b: ("POST", "/v1/models/hap:classify", {
        "context": {"user_id": "7"}}), 400, 400, ("'examples'",)),
}


def _columns(inputs: dict) -> dict:
    return {name: value.tolist() for name, value in inputs.items()}


def _grpc_call(channel, method: str, request):
    if method == "SessionRun":
        call = channel.unary_unary("/tensorflow.serving.SessionService/SessionRun",
                                   request_serializer=session_service_pb2.SessionRunRequest.SerializeToString,
                                   response_deserializer=session_service_pb2.SessionRunResponse.FromString)
        return call(request, timeout=60)
    service = (model_service_pb2_grpc.ModelServiceStub if method in ("GetModelStatus", "HandleReloadConfigRequest")
               else prediction_service_pb2_grpc.PredictionServiceStub)(channel)
    return getattr(service, method)(request, timeout=60)


def _rest_call(running, verb: str, path: str, body) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{running.rest_port}{path}", data=data, method=verb)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]


@pytest.mark.parametrize("case", list(CASES))
def test_each_request_class_gets_tf_servings_code_and_a_message_naming_the_input(
        case, running, channel, good_request, names, base_path, caplog):
    row = CASES[case]
    built = row.build(good_request, names, base_path)
    caplog.set_level(logging.DEBUG)
    if row.method == "REST":
        code, message = _rest_call(running, *built)
    else:
        try:
            _grpc_call(channel, row.method, built)
            code, message = OK, ""
        except grpc.RpcError as error:
            code, message = error.code(), error.details()
    assert code == row.ours, message
    for words in row.words + ((getattr(names, row.input_attr),) if row.input_attr else ()):
        if row.ours not in (OK, 200) and row.method != "SessionRun":
            assert words in message, message
    # UNIMPLEMENTED included: a refused request is no server error, so no traceback in the log.
    assert not [record for record in caplog.records if record.exc_info], [r.getMessage() for r in caplog.records]
    # And the server keeps serving.
    assert _grpc_call(channel, "Predict", _predict(good_request)).outputs["scores"].tensor_shape.dim[0].size == \
        len(good_request["item_id"])


def test_the_docs_table_lists_every_case():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "serving.md"), encoding="utf-8") as f:
        readme = f.read()
    missing = [case for case in CASES if f"| {case} |" not in readme]
    assert not missing, missing


# -- the data contract's bound on numerics ----------------------------------------------------

BOUND = np.float32(rq.MAX_ABS_NUMERIC)            # 9.99999984e17: the float32 nearest 1e18, below it
ABOVE = np.nextafter(BOUND, np.float32(np.inf))   # the next float32, above 1e18


def test_the_numeric_bound_is_closed_form():
    assert BOUND <= rq.MAX_ABS_NUMERIC < ABOVE
    assert rq.numeric_problem("x", np.array([BOUND, -BOUND, np.nan, 0.0], np.float32)) is None
    for value in (ABOVE, -ABOVE, np.float32(1e30), np.finfo(np.float32).max, np.inf, -np.inf):
        message = rq.numeric_problem("x", np.array([0.0, value, 1.0], np.float32))
        assert message.startswith("input 'x': the numeric value at [1] is "), message
        assert ("infinite" if np.isinf(value) else "beyond the bound of 1e18") in message
    assert "at [0, 2]" in rq.numeric_problem("x_seq", np.array([[0.0, 1.0, 1e30]], np.float32))
    assert "(2 such values)" in rq.numeric_problem("x", np.array([1e30, 0.0, -np.inf], np.float32))


@pytest.mark.parametrize("value, refused", [(BOUND, False), (-BOUND, False), (ABOVE, True), (-ABOVE, True),
                                            (np.float32(1e30), True), (np.float32(-np.inf), True)])
def test_a_value_beyond_the_bound_in_one_candidate_is_refused_rather_than_ranked(channel, good_request, names,
                                                                                 value, refused):
    """Served, a value beyond the bound in candidate 1 would rank and route that candidate by it
    alone, taking a routed slot from another candidate; it is refused as an infinite one is, so no
    ranking comes back; a value at the bound is served."""
    column = good_request[names.item_numeric].copy()
    column[1] = value
    request = _predict(good_request, **{names.item_numeric: column})
    if not refused:
        scores = tf.make_ndarray(_grpc_call(channel, "Predict", request).outputs["scores"])
        assert scores.shape == column.shape and np.isfinite(scores).all()
        return
    with pytest.raises(grpc.RpcError) as error:
        _grpc_call(channel, "Predict", request)
    assert error.value.code() == INVALID
    assert error.value.details().startswith(f"input {names.item_numeric!r}: the numeric value at [1] is ")


# -- HandleReloadConfigRequest -----------------------------------------------------------------

def test_a_reloaded_config_sets_the_version_policy_and_labels(cascade_model, good_request, tmp_path):
    base = str(tmp_path / "hap")
    for version in (1, 2):
        test_server._copy_version(cascade_model, base, version)
    running = server.start(base, "hap", port=0, poll_seconds=60)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        assert _grpc_call(channel, "Predict", _predict(good_request)).model_spec.version.value == 2
        response = _grpc_call(channel, "HandleReloadConfigRequest", _reload(
            _model_config(base, labels={"stable": 1, "canary": 2}, versions=(1, 2))))
        assert response.status.error_code == 0
        for label, version in (("stable", 1), ("canary", 2)):
            request = _predict(good_request, _set(model_spec__version_label=label))
            assert _grpc_call(channel, "Predict", request).model_spec.version.value == version
        # A label on a version the policy selects but the base path lacks: the policy is taken
        # (version 1 unloaded), the labels are not, as in TF Serving.
        with pytest.raises(grpc.RpcError) as error:
            _grpc_call(channel, "HandleReloadConfigRequest", _reload(
                _model_config(base, labels={"stable": 2, "canary": 3}, versions=(2, 3))))
        assert error.value.code() == PRECONDITION and "'canary'" in error.value.details()
        assert sorted(running.model_server._loaded) == [2]
        assert running.model_server.version_labels == {"stable": 1, "canary": 2}
        with pytest.raises(grpc.RpcError) as error:
            _grpc_call(channel, "HandleReloadConfigRequest", _reload(_model_config(base, name="rank")))
        assert error.value.code() == UNIMPLEMENTED and "'rank'" in error.value.details()
    finally:
        running.stop()
