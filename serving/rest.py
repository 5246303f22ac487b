"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) and Prometheus metrics
page for `hap serve`, on a port of their own:

    GET  /v1/models/NAME[/versions/V | /labels/L]            model status (GetModelStatus)
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signatures (GetModelMetadata)
    POST /v1/models/NAME[/versions/V | /labels/L]:predict    Predict
    POST /v1/models/NAME[/versions/V | /labels/L]:classify   Classify
    POST /v1/models/NAME[/versions/V | /labels/L]:regress    Regress
    GET  /monitoring/prometheus/metrics                      Prometheus text format, when a
                                                             monitoring config turns it on

Every endpoint turns its HTTP request into the request proto of the gRPC API and calls the same
ModelServer method the gRPC server calls, so model, version and label resolution, input checks,
error messages and metrics are the gRPC API's; what lives here is only what TF Serving's REST
layer adds (tensorflow_serving/util/json_tensor.cc), JSON to and from TensorProtos:

- a predict body is {"signature_name": optional, "instances": [...]} (row format: one entry per
  instance, an object of named inputs, or the bare value when the signature has one input; the
  instances are stacked, so every input's 0-th dimension is the number of instances) or
  {"signature_name": optional, "inputs": {...}} (columnar format: each input a whole tensor, or
  the bare tensor when the signature has one input);
- an input's dtype is the signature's, its shape the nesting of its lists (rectangular, as its
  first elements nest); a string is a JSON string, or {"b64": "<base64>"} for binary data;
- the answer is {"predictions": [...]} for the row format (one entry per row of the outputs,
  which must agree on their 0-th dimension; an object of named outputs, or the bare value when
  there is one) and {"outputs": ...} for the columnar format; float32 values are written as the
  shortest decimal that reads back as the same float32, NaN and Infinity as JSON tokens, and
  strings as JSON strings, or {"b64": ...} for outputs named *_bytes and bytes that are not UTF-8;
- a classify or regress body is {"signature_name": optional, "context": optional {feature:
  value(s)}, "examples": [{feature: value(s)}, ...]}, read into tf.Examples as TF Serving reads it
  (a JSON string or {"b64": ...} a bytes feature, an integer an int64 one, any other number a
  float one); the servicer then answers as TF Serving does for the signature it names;
- an error is {"error": "<message>"} with the HTTP status TF Serving gives its gRPC code
  (HTTP_STATUS).

The server is the standard library's ThreadingHTTPServer (a thread per connection): four routes
and JSON need nothing a web framework adds, and it adds no dependency.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import math
import re
import socketserver
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, input_pb2,
                                     model_pb2, predict_pb2, regression_pb2)

from hap.serving import metrics

if TYPE_CHECKING:
    from hap.serving.server import ModelServer

log = logging.getLogger("hap.serve")

ENTRYPOINT = "REST"
DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF = "signature_def"  # the one metadata field GetModelMetadata serves
INT64_MAX = 2 ** 63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_RANK = 32  # deeper nesting is a malformed request, not a tensor

# TF Serving's ToHTTPStatusCode (tensorflow_serving/model_servers/http_server.cc).
HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

_MODEL_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)"
                         r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                         r"(?P<resource>/metadata|:[^/:]+)?", re.IGNORECASE)
_ENDPOINTS = ("GET /v1/models/NAME[/versions/V|/labels/L][/metadata], "
              "POST /v1/models/NAME[/versions/V|/labels/L]:predict|:classify|:regress")


class ApiError(Exception):
    """A request answered with an error: its gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _ServicerContext:
    """What the servicer methods use of a gRPC context: abort(), which ends the call with a
    status, and the entrypoint its metrics are labelled with."""

    entrypoint = ENTRYPOINT

    def abort(self, code: grpc.StatusCode, details: str):
        raise ApiError(code, details)


def _call(method, request):
    return method(request, _ServicerContext())


@dataclasses.dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple = ()


def _json_response(document, status: int = 200, headers: tuple = ()) -> Response:
    return Response(status, json.dumps(document).encode("utf-8"), headers=headers)


def _error_response(status: int, message: str, headers: tuple = ()) -> Response:
    return _json_response({"error": message}, status, headers)


def _to_dict(message) -> dict:
    # TF Serving's JSON: proto field names, and fields at their defaults printed (error_message "").
    return json_format.MessageToDict(message, including_default_value_fields=True, preserving_proto_field_name=True)


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- JSON to TensorProto -----------------------------------------------------------------------

def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _string(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as e:  # binascii.Error, or characters that are not ASCII
            raise ValueError(f"not valid base64 ({e})") from None
    raise ValueError(f'expected a string or {{"b64": "<base64>"}}, got {_show(value)}')


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float32(value) -> float:
    if not _is_number(value):
        raise ValueError(f"expected a number, got {_show(value)}")
    # Infinities pass, to be refused with the gRPC API's words (request.numeric_problem); an
    # int is compared exactly, as one over 1e308 has no float.
    if abs(value) > FLOAT32_MAX and value not in (math.inf, -math.inf):
        raise ValueError(f"{_show(value)} does not fit a float32")
    return value


def _float64(value) -> float:
    if not _is_number(value):
        raise ValueError(f"expected a number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:  # an int over 1e308
        raise ValueError(f"{_show(value)} does not fit a float64") from None


def _integer(bits: int) -> Callable:
    def convert(value) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {_show(value)}")
        if not -2 ** (bits - 1) <= value < 2 ** (bits - 1):
            raise ValueError(f"{value} does not fit an int{bits}")
        return value
    return convert


def _boolean(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


# dtype -> (the TensorProto field that carries its values, the conversion of one JSON value)
_JSON_VALUES = {
    types_pb2.DT_STRING: ("string_val", _string),
    types_pb2.DT_FLOAT: ("float_val", _float32),
    types_pb2.DT_DOUBLE: ("double_val", _float64),
    types_pb2.DT_INT32: ("int_val", _integer(32)),
    types_pb2.DT_INT64: ("int64_val", _integer(64)),
    types_pb2.DT_BOOL: ("bool_val", _boolean),
}


def _indices(indices: tuple) -> str:
    return "".join(f"[{i}]" for i in indices)


def _tensor(value, dtype: int, input_name: str, locate: Callable[[tuple], str]) -> tensor_pb2.TensorProto:
    """The TensorProto of one input's JSON value. Its shape is the nesting of its lists, read
    from their first elements as TF Serving reads it; every other element must agree (a tensor is
    rectangular). `locate(indices)` names an element of the request in error messages."""
    if dtype not in _JSON_VALUES:
        raise ApiError(grpc.StatusCode.UNIMPLEMENTED,
                       f"input {input_name!r} has dtype {tf.dtypes.as_dtype(dtype).name}, which the REST API does "
                       f"not convert from JSON (it converts {', '.join(tf.dtypes.as_dtype(d).name for d in _JSON_VALUES)})")
    field, convert = _JSON_VALUES[dtype]
    shape, first = [], value
    while isinstance(first, list) and len(shape) <= MAX_RANK:
        shape.append(len(first))
        first = first[0] if first else None
    if len(shape) > MAX_RANK:
        raise _invalid(f"{locate(())}: lists nested deeper than {MAX_RANK} levels")
    values: list = []

    def fill(item, indices: tuple) -> None:
        depth = len(indices)
        if depth == len(shape):
            if isinstance(item, list):
                raise _invalid(f"{locate(indices)}: expected a single value, got a list; the tensor's shape, as its "
                               f"first elements nest, is {shape}")
            try:
                values.append(convert(item))
            except ValueError as e:
                raise _invalid(f"{locate(indices)}: {e} (input {input_name!r} is "
                               f"{tf.dtypes.as_dtype(dtype).name})") from None
            return
        if not isinstance(item, list) or len(item) != shape[depth]:
            got = f"a list of {len(item)}" if isinstance(item, list) else "a single value"
            raise _invalid(f"{locate(indices)}: expected a list of {shape[depth]}, got {got}; the tensor's shape, "
                           f"as its first elements nest, is {shape}")
        for i, element in enumerate(item):
            fill(element, indices + (i,))

    fill(value, ())
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]))
    getattr(proto, field).extend(values)
    return proto


def _unknown_inputs(names, dtypes: dict, where: str) -> ApiError:
    return _invalid(f"unknown input(s) {', '.join(where + name for name in names)}: the signature's inputs are "
                    f"{', '.join(sorted(dtypes))}")


def _row_tensors(instances, dtypes: dict) -> dict:
    """The inputs of a row-format request: each input's values stacked over the instances."""
    if not isinstance(instances, list) or not instances:
        raise _invalid(f"'instances' must be a non-empty list (one entry per instance), got {_show(instances)}")
    if not isinstance(instances[0], dict) or _is_b64(instances[0]):
        if len(dtypes) != 1:
            raise _invalid(f"instances[0]: the signature has {len(dtypes)} inputs ({', '.join(sorted(dtypes))}), so "
                           "every instance must be an object naming them")
        (name, dtype), = dtypes.items()
        return {name: _tensor(instances, dtype, name, lambda indices: "instances" + _indices(indices))}
    names = set(instances[0])
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or _is_b64(instance):
            raise _invalid(f"instances[{i}]: expected an object of named inputs, as instances[0] is, got {_show(instance)}")
        if set(instance) != names:
            raise _invalid(f"instances[{i}]: names inputs {sorted(instance)}, instances[0] names {sorted(names)}; "
                           "every instance must name the same inputs")
    unknown = sorted(names - set(dtypes))
    if unknown:
        raise _unknown_inputs(unknown, dtypes, "instances[0].")

    def locate_in(name: str) -> Callable[[tuple], str]:
        return lambda indices: f"instances{_indices(indices[:1])}.{name}{_indices(indices[1:])}"

    return {name: _tensor([instance[name] for instance in instances], dtypes[name], name, locate_in(name))
            for name in sorted(names)}


def _column_tensors(inputs, dtypes: dict) -> dict:
    """The inputs of a columnar-format request: each input given whole."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(dtypes) != 1:
            raise _invalid(f"inputs: the signature has {len(dtypes)} inputs ({', '.join(sorted(dtypes))}), so "
                           "'inputs' must be an object naming them")
        (name, dtype), = dtypes.items()
        return {name: _tensor(inputs, dtype, name, lambda indices: "inputs" + _indices(indices))}
    unknown = sorted(set(inputs) - set(dtypes))
    if unknown:
        raise _unknown_inputs(unknown, dtypes, "inputs.")

    def locate_in(name: str) -> Callable[[tuple], str]:
        return lambda indices: f"inputs.{name}{_indices(indices)}"

    return {name: _tensor(value, dtypes[name], name, locate_in(name)) for name, value in sorted(inputs.items())}


# -- JSON to tf.Examples (classify, regress) ----------------------------------------------------

def _feature(value, where: str) -> feature_pb2.Feature:
    """A tf.Example feature of one JSON value or list of values, as TF Serving reads it
    (json_tensor.cc, AddValueToFeature): strings and {"b64": ...} bytes, integers int64, other
    numbers float; one kind per feature."""
    feature = feature_pb2.Feature()
    for i, item in enumerate(value if isinstance(value, list) else [value]):
        at = f"{where}[{i}]" if isinstance(value, list) else where
        try:
            if isinstance(item, str) or _is_b64(item):
                kind, converted = "bytes_list", _string(item)
            elif isinstance(item, bool) or not _is_number(item):
                raise ValueError(f'expected a string, {{"b64": "<base64>"}} or a number, got {_show(item)}')
            elif isinstance(item, int):
                kind, converted = "int64_list", _integer(64)(item)
            else:
                kind, converted = "float_list", _float32(item)
        except ValueError as e:
            raise _invalid(f"{at}: {e}") from None
        have = feature.WhichOneof("kind")
        if have not in (None, kind):
            raise _invalid(f"{at}: a {kind.split('_')[0]} value in a feature of {have.split('_')[0]} values")
        getattr(feature, kind).value.append(converted)
    return feature


def _example(document, where: str) -> example_pb2.Example:
    if not isinstance(document, dict) or _is_b64(document):
        raise _invalid(f"{where}: an example is an object of named features, got {_show(document)}")
    example = example_pb2.Example()
    for name, value in document.items():
        example.features.feature[name].CopyFrom(_feature(value, f"{where}.{name}"))
    return example


def _example_input(document: dict) -> input_pb2.Input:
    """The Input of a classify or regress body: its examples, with the context if it has one."""
    examples = document.get("examples")
    if not isinstance(examples, list) or not examples:
        raise _invalid("the request body needs 'examples', a non-empty list of objects of named features")
    parsed = [_example(example, f"examples[{i}]") for i, example in enumerate(examples)]
    if "context" in document:
        return input_pb2.Input(example_list_with_context=input_pb2.ExampleListWithContext(
            examples=parsed, context=_example(document["context"], "context")))
    return input_pb2.Input(example_list=input_pb2.ExampleList(examples=parsed))


# -- TensorProto to JSON -----------------------------------------------------------------------

def _float32_json(value: np.float32) -> float:
    # The shortest decimal that reads back as this float32 (0.1, not 0.10000000149011612).
    return float(str(value))


def _bytes_json(value: bytes, as_base64: bool):
    if not as_base64:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass  # a JSON string cannot carry it
    return {"b64": base64.b64encode(value).decode("ascii")}


def _json_tensor(name: str, proto) -> object:
    """An output tensor as nested JSON lists (a bare value for a scalar)."""
    array = tf.make_ndarray(proto)
    if array.dtype == np.float32:
        converted = np.frompyfunc(_float32_json, 1, 1)(array)
    elif array.dtype == object:
        # TF Serving's convention: an output named *_bytes holds binary data.
        converted = np.frompyfunc(lambda v: _bytes_json(v, name.endswith("_bytes")), 1, 1)(array)
    else:
        return array.tolist()
    return np.asarray(converted, dtype=object).tolist()


def _predictions(outputs) -> dict:
    """The row format's answer: one entry per row of the outputs."""
    rows = {}
    for name in sorted(outputs):
        dims = outputs[name].tensor_shape.dim
        if not dims:
            raise _invalid(f"output {name!r} is a scalar, and the row format ('instances') answers one entry per row "
                           "of the outputs; send 'inputs' (columnar format)")
        rows[name] = dims[0].size
    if len(set(rows.values())) > 1:
        raise _invalid("the row format ('instances') answers one entry per row of the outputs, and their numbers of "
                       f"rows differ ({', '.join(f'{name}: {n}' for name, n in rows.items())}); "
                       "send 'inputs' (columnar format)")
    columns = {name: _json_tensor(name, outputs[name]) for name in rows}
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    batch = next(iter(rows.values()))
    return {"predictions": [{name: column[i] for name, column in columns.items()} for i in range(batch)]}


def _outputs(outputs) -> dict:
    columns = {name: _json_tensor(name, outputs[name]) for name in sorted(outputs)}
    return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}


# -- the API -----------------------------------------------------------------------------------

class RestApi:
    """Answers one HTTP request (method, target, body) by calling the servicer."""

    def __init__(self, model_server: ModelServer, metrics_path: str | None = None):
        """`metrics_path`: where the Prometheus page is served (metrics.load_monitoring_config),
        None for nowhere."""
        self.model_server = model_server
        self.metrics_path = metrics_path

    def answer(self, method: str, target: str, body: bytes) -> Response:
        path = urllib.parse.urlsplit(target).path
        try:
            allowed, endpoint = self._route(path)
            if method != allowed:
                return _error_response(405, f"{path} takes {allowed}, not {method}", headers=(("Allow", allowed),))
            return endpoint(body)
        except ApiError as e:
            return _error_response(HTTP_STATUS.get(e.code, 500), str(e))
        except Exception:  # a bug: the client gets a 500 and a short message, the log the traceback
            log.exception("REST %s %s failed", method, path)
            return _error_response(500, "internal error (the server log has the traceback)")

    def _route(self, path: str) -> tuple[str, Callable[[bytes], Response]]:
        """The method a path takes and the endpoint that answers it."""
        if self.metrics_path is not None and path == self.metrics_path:
            return "GET", self._metrics
        match = _MODEL_PATH.fullmatch(path)
        resource = (match["resource"] or "").lower() if match else None
        if resource == "":
            return "GET", lambda body: self._status(_model_spec(match))
        if resource == "/metadata":
            return "GET", lambda body: self._metadata(_model_spec(match))
        if resource == ":predict":
            return "POST", lambda body: self._predict(_model_spec(match), body)
        if resource in (":classify", ":regress"):
            return "POST", lambda body: self._classify_or_regress(_model_spec(match), resource[1:], body)
        endpoints = _ENDPOINTS + (f", GET {self.metrics_path}" if self.metrics_path else "")
        raise ApiError(grpc.StatusCode.NOT_FOUND, f"no endpoint {path}; the REST API has {endpoints}")

    def _metrics(self, body: bytes) -> Response:
        return Response(200, generate_latest(self.model_server.metrics.registry), CONTENT_TYPE_PLAIN_0_0_4)

    def _classify_or_regress(self, spec, method: str, body: bytes) -> Response:
        """:classify or :regress: the body read into tf.Examples as TF Serving reads it, then the
        servicer's Classify or Regress, which answers as TF Serving does for the signature named
        (the cascade's signatures take no tf.Examples under 'inputs': INVALID_ARGUMENT)."""
        api = metrics.CLASSIFY if method == "classify" else metrics.REGRESS
        started = time.perf_counter()
        try:
            document = _json_object(body)
            unknown = sorted(set(document) - {"signature_name", "context", "examples"})
            if unknown:
                raise _invalid(f"unknown key(s) {', '.join(map(repr, unknown))} in the request body; it takes "
                               "'signature_name', 'context' and 'examples'")
            signature_name = document.get("signature_name", "")
            if not isinstance(signature_name, str):
                raise _invalid(f"signature_name must be a string, got {_show(signature_name)}")
            spec.signature_name = signature_name
            request_class = (classification_pb2.ClassificationRequest if method == "classify"
                             else regression_pb2.RegressionRequest)
            request = request_class(model_spec=spec, input=_example_input(document))
        except ApiError as e:
            self.model_server.metrics.record_request(spec.name, api, ENTRYPOINT, e.code.name,
                                                     time.perf_counter() - started)
            raise
        servicer_method = self.model_server.Classify if method == "classify" else self.model_server.Regress
        return _json_response(_to_dict(_call(servicer_method, request).result))

    def _status(self, spec) -> Response:
        response = _call(self.model_server.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
        return _json_response(_to_dict(response))

    def _signatures(self, spec) -> tuple:
        """GetModelMetadata's answer and its signature map, unpacked from its Any."""
        response = _call(self.model_server.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[SIGNATURE_DEF]))
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF].Unpack(signatures)
        return response, signatures

    def _metadata(self, spec) -> Response:
        response, signatures = self._signatures(spec)
        # TF Serving's layout: the signature map, unpacked, under metadata.signature_def.
        return _json_response({"model_spec": _to_dict(response.model_spec),
                               "metadata": {SIGNATURE_DEF: _to_dict(signatures)}})

    def _predict(self, spec, body: bytes) -> Response:
        started = time.perf_counter()
        try:
            request, row_format = self._predict_request(spec, body)
        except ApiError as e:
            # Refused before the servicer saw it: counted here, as the servicer counts the others.
            self.model_server.metrics.record_request(spec.name, metrics.PREDICT, ENTRYPOINT, e.code.name,
                                                     time.perf_counter() - started)
            raise
        response = _call(self.model_server.Predict, request)
        return _json_response(_predictions(response.outputs) if row_format else _outputs(response.outputs))

    def _predict_request(self, spec, body: bytes) -> tuple[predict_pb2.PredictRequest, bool]:
        """The PredictRequest of a JSON body, and whether the body is in row format."""
        document = _json_object(body)
        unknown = sorted(set(document) - {"signature_name", "instances", "inputs"})
        if unknown:
            raise _invalid(f"unknown key(s) {', '.join(map(repr, unknown))} in the request body; it takes "
                           "'signature_name' and one of 'instances' (row format) or 'inputs' (columnar format)")
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise _invalid(f"signature_name must be a string, got {_show(signature_name)}")
        row_format = "instances" in document
        if row_format == ("inputs" in document):
            raise _invalid("the request body needs one of 'instances' (row format) or 'inputs' (columnar format)"
                           + (", not both" if row_format else ""))
        request = predict_pb2.PredictRequest(model_spec=spec)
        request.model_spec.signature_name = signature_name
        _, signatures = self._signatures(spec)
        resolved_name = signature_name or DEFAULT_SIGNATURE
        if resolved_name not in signatures.signature_def or resolved_name.startswith("__"):
            # INVALID_ARGUMENT, as TF Serving's REST API (http_rest_api_handler.cc, GetInfoMap);
            # its gRPC API says FAILED_PRECONDITION. Both are HTTP 400.
            names = sorted(name for name in signatures.signature_def if not name.startswith("__"))
            raise _invalid(f"unknown signature {resolved_name!r}; the model has: {', '.join(names)}")
        dtypes = {name: info.dtype for name, info in signatures.signature_def[resolved_name].inputs.items()}
        tensors = (_row_tensors(document["instances"], dtypes) if row_format
                   else _column_tensors(document["inputs"], dtypes))
        for name, tensor in tensors.items():
            request.inputs[name].CopyFrom(tensor)
        return request, row_format


def _json_object(body: bytes) -> dict:
    if not body:
        raise _invalid("the request body is empty; expected a JSON object")
    try:
        document = json.loads(body)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise _invalid(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise _invalid("the request body is not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise _invalid(f"the request body must be a JSON object, got {_show(document)}")
    return document


def _model_spec(match: re.Match) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(match["name"]))
    if match["version"] is not None:
        version = int(match["version"])
        if version > INT64_MAX:
            raise _invalid(f"version {match['version']} is not an int64")
        spec.version.value = version
    elif match["label"] is not None:
        spec.version_label = urllib.parse.unquote(match["label"])
    return spec


# -- the HTTP server ---------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: RestServer
    protocol_version = "HTTP/1.1"  # keep-alive, and curl's "Expect: 100-continue" answered at once
    server_version = "hap-serve"

    def _answer(self) -> None:
        with self.server.in_flight():
            if self.server.stopping:
                # As the gRPC server refuses new calls while it drains.
                self._send(_error_response(503, "the server is shutting down"), close=True)
                return
            if "Transfer-Encoding" in self.headers:
                self._send(_error_response(411, "send the request body with a Content-Length "
                                                "(chunked transfer encoding is not supported)"), close=True)
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                if length < 0:
                    raise ValueError
            except ValueError:
                self._send(_error_response(400, f"Content-Length {self.headers['Content-Length']!r} is not a "
                                                "number of bytes"), close=True)
                return
            if length > self.server.max_body_bytes:
                self._send(_error_response(413, f"the request body has {length} bytes, over the limit of "
                                                f"{self.server.max_body_bytes} (--max-message-mb)"), close=True)
                return
            self._send(self.server.api.answer(self.command, self.path, self.rfile.read(length)))

    # One entry point for every method, so that a known path answers 405 to the wrong method.
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def _send(self, response: Response, close: bool = False) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if close:  # the body was not read, so the connection cannot carry another request
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's answer to a request it cannot parse (or an unknown method), in JSON
        rather than an HTML page."""
        self.log_error("code %d, message %s", code, message)
        self._send(_error_response(code, message or HTTPStatus(code).phrase), close=True)

    def log_message(self, message_format: str, *args) -> None:
        log.debug("REST %s %s", self.address_string(), message_format % args)


class RestServer(ThreadingHTTPServer):
    """The REST API on `address`, served from a thread of its own, a thread per connection
    (daemon threads: an idle keep-alive connection does not hold up exit)."""

    def __init__(self, address: tuple[str, int], model_server: ModelServer, max_body_bytes: int,
                 metrics_path: str | None = None):
        super().__init__(address, _Handler)
        self.api = RestApi(model_server, metrics_path)
        self.max_body_bytes = max_body_bytes
        self.stopping = False
        self._busy = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self.serve_forever, name="hap-serve-rest", daemon=True)

    def server_bind(self) -> None:
        # HTTPServer's looks up the host's DNS name, which stalls where there is no DNS; unused here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        # What reaches here is the connection failing (a client hanging up mid-answer): the API's
        # own errors are answered in RestApi.answer. socketserver would print a traceback.
        log.debug("REST connection from %s failed", client_address, exc_info=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self._thread.start()

    @contextlib.contextmanager
    def in_flight(self):
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def stop(self, grace: float | None) -> None:
        """Stops accepting connections, answers 503 to new requests on open ones, and waits up to
        `grace` seconds (None: not at all) for the requests in flight to finish."""
        self.stopping = True
        self.shutdown()
        self.server_close()
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout=grace or 0)
