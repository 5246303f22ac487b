"""TF Serving's REST API and Prometheus metrics page of `hap serve`, checked against its gRPC API
on the same server: the same servicer answers both, so the answers must be the same."""
import base64
import http.client
import json
import os
import re
import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from hap import cli
from hap.data import contract as c
from hap.serving import client, metrics, rest, server
from hap.serving import request as rq

import test_server

# Seconds each: servers in subprocesses, subprocess training, or TensorFlow Transform runs.
pytestmark = pytest.mark.slow

# tests/test_server.py's fixtures: the e2e cascade in a base path of its own, and its largest request.
base_path = test_server.base_path
good_request = test_server.good_request

AVAILABLE = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                       "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.fixture(scope="module")
def running(base_path):
    """Version 1 of the cascade, also labelled "stable", over gRPC and REST, with the metrics page
    at TF Serving's default path."""
    policy = server.VersionPolicy(specific=server.VersionPolicy.Specific(versions=[1]))
    running = server.start(base_path, "hap", port=0, rest_api_port=0, poll_seconds=60, version_policy=policy,
                           version_labels={"stable": 1}, metrics_path=metrics.PATH)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(running):
    return client.connect(f"127.0.0.1:{running.port}")


def _http(running, method: str, path: str, body=None) -> tuple[int, object]:
    """(HTTP status, decoded JSON answer) of one REST call; `body` is JSON-encoded unless bytes."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{running.rest_port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _raw_exchange(port: int, request: bytes) -> tuple[int, dict]:
    """Sends `request` as is and reads the answer to the end (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _columns(inputs: dict) -> dict:
    return {name: value.tolist() for name, value in inputs.items()}


def _grpc_error(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=60)
    return error.value


def test_status_is_tf_servings_json_for_the_model_a_version_and_a_label(running):
    for path in ("/v1/models/hap", "/v1/models/hap/versions/1", "/v1/models/hap/labels/stable"):
        assert _http(running, "GET", path) == (200, AVAILABLE), path


@pytest.mark.parametrize("path, status, message", [
    ("/v1/models/rank", 404, "unknown model 'rank'; this server serves 'hap'"),
    ("/v1/models/hap/versions/7", 404, "version 7 of 'hap' is not known"),
])
def test_status_of_an_unknown_model_or_version(running, path, status, message):
    assert _http(running, "GET", path) == (status, {"error": message})


def test_status_by_label_lists_every_version_as_tf_serving_does(running):
    """TF Serving's GetModelStatus resolves a version, not a label: by label, known or not, it
    lists every version of the model (get_model_status_impl.cc)."""
    assert _http(running, "GET", "/v1/models/hap/labels/nightly") == (200, AVAILABLE)


def test_the_compose_health_check_finds_the_model_available(running):
    """serving/tf_serving/docker-compose.yml's check: an HTTP/1.0 GET, read to the end, grep AVAILABLE."""
    assert _raw_exchange(running.rest_port, b"GET /v1/models/hap HTTP/1.0\r\n\r\n") == (200, AVAILABLE)


def test_metadata_carries_the_grpc_signatures(running, stub):
    status, document = _http(running, "GET", "/v1/models/hap/labels/stable/metadata")
    assert status == 200
    assert document["model_spec"] == {"name": "hap", "signature_name": "", "version": "1"}
    signatures = json_format.ParseDict(document["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap())
    response = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="hap"), metadata_field=["signature_def"]), timeout=60)
    expected = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(expected)
    assert signatures == expected and "cascade" in signatures.signature_def


def test_columnar_predict_answers_what_grpc_answers(running, stub, good_request):
    expected = client.predict(stub, "hap", "cascade", good_request)
    for path, body in (("/v1/models/hap:predict", {"signature_name": "cascade", "inputs": _columns(good_request)}),
                       # serving_default is the cascade; a label names version 1
                       ("/v1/models/hap/labels/stable:predict", {"inputs": _columns(good_request)})):
        status, document = _http(running, "POST", path, body)
        assert status == 200, document
        assert set(document["outputs"]) == set(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(np.asarray(document["outputs"][name], value.dtype), value, err_msg=name)


def test_row_predict_answers_one_prediction_per_instance(running, stub, good_request, e2e_features):
    items = {f.name: good_request[f.name] for f in e2e_features.features if f.role == c.ITEM}
    expected = client.predict(stub, "hap", "item_embeddings", items)["embeddings"]
    n = len(good_request["item_id"])
    columns = _columns(items)
    instances = [{name: column[i] for name, column in columns.items()} for i in range(n)]
    status, document = _http(running, "POST", "/v1/models/hap/versions/1:predict",
                             {"signature_name": "item_embeddings", "instances": instances})
    assert status == 200, document
    # One output: each prediction is its row, bare (TF Serving's row format).
    np.testing.assert_array_equal(np.asarray(document["predictions"], np.float32), expected)


def test_binary_strings_travel_as_b64(running, stub, good_request, e2e_features):
    examples = rq.RequestLayout(e2e_features).to_examples(good_request)
    expected = client.predict(stub, "hap", "score_examples", {"examples": np.array(examples, object)})
    instances = [{"b64": base64.b64encode(example).decode("ascii")} for example in examples]
    status, document = _http(running, "POST", "/v1/models/hap:predict",
                             {"signature_name": "score_examples", "instances": instances})
    assert status == 200, document
    assert len(document["predictions"]) == len(examples)
    for name in ("light_scores", "heavy_scores"):
        np.testing.assert_array_equal(np.array([p[name] for p in document["predictions"]], np.float32),
                                      expected[name], err_msg=name)


def test_the_row_format_cannot_carry_the_cascades_per_request_inputs(running, good_request):
    """Row format stacks every input over the instances; the cascade's user features are [1]."""
    n = len(good_request["item_id"])
    columns = _columns(good_request)
    instances = [{name: column[i if len(column) == n else 0] for name, column in columns.items()} for i in range(n)]
    status, document = _http(running, "POST", "/v1/models/hap:predict", {"signature_name": "cascade",
                                                                         "instances": instances})
    assert status == 400
    assert re.fullmatch(rf"input '[^']+': expected shape \[1(, 'N')?\], got \[{n}(, \d+)?\]", document["error"])


def test_an_unknown_signature_or_version_gets_the_grpc_message(running, stub, good_request):
    request = rq.predict_request("hap", "rank_everything", good_request)
    status, document = _http(running, "POST", "/v1/models/hap:predict",
                             {"signature_name": "rank_everything", "inputs": _columns(good_request)})
    assert (status, document) == (400, {"error": _grpc_error(stub, request).details()})
    request.model_spec.signature_name = "cascade"
    request.model_spec.version.value = 7
    status, document = _http(running, "POST", "/v1/models/hap/versions/7:predict", {"inputs": _columns(good_request)})
    assert (status, document) == (404, {"error": _grpc_error(stub, request).details()})


def _bad_bodies(good: dict, features: c.FeatureSet) -> dict:
    """name -> (request body, HTTP status, the error message's start)."""
    numeric = next(f.name for f in features.features if f.role == c.ITEM and f.kind == c.NUMERIC)
    sequence = next(f.name for f in features.features if f.kind == c.SEQUENCE)
    columns = _columns(good)
    return {
        "malformed JSON": (b'{"inputs": ', 400, "the request body is not valid JSON"),
        "empty body": (b"", 400, "the request body is empty"),
        "not an object": ([1, 2], 400, "the request body must be a JSON object"),
        "both formats": ({"inputs": columns, "instances": [columns]}, 400,
                         "the request body needs one of 'instances' (row format) or 'inputs' (columnar format), "
                         "not both"),
        "unknown key": ({"inputs": columns, "output_filter": ["scores"]}, 400, "unknown key(s) 'output_filter'"),
        "unknown input": ({"inputs": {**columns, "u_colour": ["red"]}}, 400, "unknown input(s) inputs.u_colour"),
        "missing input": ({"inputs": {k: v for k, v in columns.items() if k != "item_id"}}, 400,
                          "missing input(s): item_id"),
        "string for a float": ({"inputs": {**columns, numeric: ["x"] * len(columns[numeric])}}, 400,
                               f"inputs.{numeric}[0]: expected a number, got \"x\""),
        "ragged sequence": ({"inputs": {**columns, sequence: [["1", "2"], ["3"]]}}, 400,
                            f"inputs.{sequence}[1]: expected a list of 2, got a list of 1"),
        "bad base64": ({"signature_name": "score_examples", "instances": [{"b64": "not base64!"}]}, 400,
                       "instances[0]: not valid base64"),
    }


@pytest.mark.parametrize("problem", ["malformed JSON", "empty body", "not an object", "both formats", "unknown key",
                                     "unknown input", "missing input", "string for a float", "ragged sequence",
                                     "bad base64"])
def test_a_bad_predict_body_is_named_and_the_server_keeps_serving(running, good_request, e2e_features, problem):
    body, expected_status, message = _bad_bodies(good_request, e2e_features)[problem]
    status, document = _http(running, "POST", "/v1/models/hap/versions/1:predict", body)
    assert status == expected_status and document["error"].startswith(message), document
    assert _http(running, "POST", "/v1/models/hap:predict", {"inputs": _columns(good_request)})[0] == 200


@pytest.mark.parametrize("method, path, status, allow", [
    ("GET", "/v2/models/hap", 404, None),
    ("GET", "/v1/models/hap:explain", 404, None),
    ("GET", "/v1/models/hap:predict", 405, "POST"),
    ("DELETE", "/v1/models/hap", 405, "GET"),
    ("POST", "/v1/models/hap/metadata", 405, "GET"),
    ("POST", "/v1/models/hap:classify", 400, None),  # TF Serving's answer: no 'examples'
    ("POST", "/v1/models/hap:regress", 400, None),
])
def test_unknown_paths_and_methods_get_json_errors(running, method, path, status, allow):
    connection = http.client.HTTPConnection("127.0.0.1", running.rest_port, timeout=30)
    connection.request(method, path, body=b"{}" if method == "POST" else None)
    response = connection.getresponse()
    document = json.loads(response.read())
    connection.close()
    assert response.status == status and set(document) == {"error"} and document["error"]
    assert response.getheader("Allow") == allow


def _samples(running, name: str) -> dict:
    """Label values -> value of the metrics page's samples called `name`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{running.rest_port}{metrics.PATH}", timeout=30) as response:
        text = response.read().decode()
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name}


def _increase(before: dict, after: dict) -> dict:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def test_metrics_count_predict_requests_of_both_apis_by_status(running, stub, good_request):
    count, latency = ":tensorflow:serving:request_count", ":tensorflow:serving:request_latency_count"
    counts_before, latencies_before = _samples(running, count), _samples(running, latency)
    for _ in range(2):
        client.predict(stub, "hap", "cascade", good_request)
    with pytest.raises(grpc.RpcError):
        client.predict(stub, "rank", "cascade", good_request)
    assert _http(running, "POST", "/v1/models/hap:predict", {"inputs": _columns(good_request)})[0] == 200
    assert _http(running, "POST", "/v1/models/hap:predict", {"signature_name": "rank", "inputs": {}})[0] == 400
    assert _http(running, "POST", "/v1/models/hap:predict", b"{")[0] == 400
    assert _http(running, "POST", "/v1/models/hap/versions/7:predict", {"inputs": {}})[0] == 404
    assert _http(running, "GET", "/v1/models/hap")[0] == 200  # status and metadata are not requests counted
    assert _http(running, "GET", "/v1/models/hap/metadata")[0] == 200

    def labels(model_name, status):
        return (("model_name", model_name), ("status", status))

    assert _increase(counts_before, _samples(running, count)) == {
        labels("hap", "OK"): 3, labels("hap", "INVALID_ARGUMENT"): 2, labels("hap", "NOT_FOUND"): 1,
        labels("rank", "NOT_FOUND"): 1}
    # Latency of the requests answered OK only, as TF Serving records it.
    assert _increase(latencies_before, _samples(running, latency)) == {
        (("API", "Predict"), ("entrypoint", "GRPC"), ("model_name", "hap")): 2,
        (("API", "Predict"), ("entrypoint", "REST"), ("model_name", "hap")): 1}


def test_metrics_time_the_warm_up_of_the_loaded_version(running, base_path):
    assert _samples(running, ":tensorflow:serving:model_warmup_latency_count") == {
        (("model_path", f"{base_path}/1"), ("status", "OK")): 1}


def test_an_oversized_body_is_refused_unread_and_stopping_closes_the_port(running):
    rest_server = rest.RestServer(("127.0.0.1", 0), running.model_server, max_body_bytes=1000)
    rest_server.start()
    # Only the headers: the server must answer without waiting for the body.
    assert _raw_exchange(rest_server.port, b"POST /v1/models/hap:predict HTTP/1.1\r\nContent-Length: 1001\r\n\r\n") == (
        413, {"error": "the request body has 1001 bytes, over the limit of 1000 (--max-message-mb)"})
    connection = http.client.HTTPConnection("127.0.0.1", rest_server.port, timeout=30)
    connection.request("GET", "/v1/models/hap")
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())) == (200, AVAILABLE)
    rest_server.stop(grace=0)
    connection.request("GET", "/v1/models/hap")  # on the same keep-alive connection
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())) == (503, {"error": "the server is shutting down"})
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", rest_server.port), timeout=30)


def test_classify_and_regress_answer_as_tf_serving_for_the_cascade(running, good_request):
    """The body is read as TF Serving reads it, then refused as TF Serving refuses the cascade's
    signatures: none takes serialized tf.Examples under 'inputs' (HTTP 400, INVALID_ARGUMENT)."""
    examples = [{"item_id": "1", "i_age_hours": 3.5, "c_hour": 7, "tags": ["a", {"b64": "Yg=="}]}]
    status, document = _http(running, "POST", "/v1/models/hap:classify", {"context": {"user_id": "7"},
                                                                          "examples": examples})
    assert status == 400 and document["error"].startswith("signature 'serving_default' cannot classify: it has ")
    status, document = _http(running, "POST", "/v1/models/hap/labels/stable:regress",
                             {"signature_name": "score_examples", "examples": examples})
    assert (status, document) == (400, {"error": "signature 'score_examples' cannot regress: it has 2 outputs "
                                                 "(heavy_scores, light_scores); a regress signature has one, 'outputs'"})
    status, document = _http(running, "POST", "/v1/models/hap:classify", {"examples": [{"a": [1, "x"]}]})
    assert (status, document) == (400, {"error": "examples[0].a[1]: a bytes value in a feature of int64 values"})
    status, document = _http(running, "POST", "/v1/models/rank:regress", {"examples": examples})
    assert status == 404 and "'rank'" in document["error"]


@pytest.mark.parametrize("text, path", [
    ("", None),                                                           # no config: no page, as in TF Serving
    ("prometheus_config { enable: false }", None),
    ("prometheus_config { enable: true }", metrics.PATH),                 # TF Serving's default path
    ('prometheus_config { enable: true path: "/metrics" }', "/metrics"),
])
def test_a_monitoring_config_turns_the_metrics_page_on_or_off(running, tmp_path, text, path):
    config_file = tmp_path / "monitoring.config"
    config_file.write_text(text)
    assert metrics.load_monitoring_config(str(config_file)) == path
    rest_server = rest.RestServer(("127.0.0.1", 0), running.model_server, max_body_bytes=1000, metrics_path=path)
    rest_server.start()
    try:
        for candidate in (metrics.PATH, "/metrics"):
            url = f"http://127.0.0.1:{rest_server.port}{candidate}"
            if candidate == path:
                with urllib.request.urlopen(url, timeout=30) as response:
                    assert response.status == 200 and ":tensorflow:serving:request_count" in response.read().decode()
            else:
                with pytest.raises(urllib.error.HTTPError) as error:
                    urllib.request.urlopen(url, timeout=30)
                assert error.value.code == 404
    finally:
        rest_server.stop(grace=0)


def test_the_deployment_monitoring_config_turns_it_on_at_the_default_path():
    path = os.path.join(os.path.dirname(__file__), "..", "serving", "tf_serving", "monitoring.config")
    assert metrics.load_monitoring_config(path) == metrics.PATH


def test_a_bad_monitoring_config_is_named(tmp_path, capsys):
    config_file = tmp_path / "monitoring.config"
    config_file.write_text("prometheus_config { enabled: true }")
    with pytest.raises(ValueError, match="not a TF Serving monitoring config") as error:
        metrics.load_monitoring_config(str(config_file))
    assert str(config_file) in str(error.value)
    # The page is served on the REST port: turning it on without one is an error, before any loading.
    config_file.write_text("prometheus_config { enable: true }")
    assert cli.main(["serve", str(tmp_path / "no_model"), "--monitoring-config-file", str(config_file)]) == 2
    assert "give --rest-api-port too" in capsys.readouterr().err
