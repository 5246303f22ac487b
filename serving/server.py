"""A development server that speaks TF Serving's gRPC API, for machines without TF Serving.

TF Serving's model server is not installable everywhere (it ships as a Docker image and a
Debian package of its own); this server lets tests, benchmarks and `hap query` run against the
same model base path with the same client code. It implements, from the tensorflow-serving-api
protos, PredictionService.Predict and .GetModelMetadata and ModelService.GetModelStatus:

- it serves the newest complete version under `<model_base_path>/<version>/` (a version is
  complete once its `saved_model.pb` exists: TFX's Pusher copies that file last, as TF Serving
  expects) and polls for newer ones; a new version is loaded beside the current one and swapped
  in atomically, so requests in flight finish on the version they started on; a version that
  fails to load is logged and retried, and the current one keeps serving;
- malformed requests (unknown model, version or signature, a missing or extra input, a wrong
  dtype or shape, and whatever the graph rejects, such as N = 0 or N over the limit) are
  answered with INVALID_ARGUMENT (NOT_FOUND for an unknown model or version, as TF Serving does)
  and a message naming the problem.

It is for development and tests. Production uses TF Serving (see serving/README.md): this
server runs the model in one Python process, has no server-side batching and no monitoring.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc, status_pb2)

from hap.serving.model_versions import complete_versions
from hap.serving.warmup import WARMUP_FILE

log = logging.getLogger("hap.serve")

DEFAULT_PORT = 8500
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SIGNATURE_DEF = "signature_def"


class RequestError(Exception):
    """A request the server rejects; `code` is the gRPC status it answers with."""

    def __init__(self, message: str, code=grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class LoadedVersion:
    version: int
    path: str
    model: object                   # keeps the loaded SavedModel's resources alive
    signatures: dict                # name -> concrete function
    signature_defs: dict            # name -> SignatureDef proto, for GetModelMetadata

    @classmethod
    def load(cls, base_path: str, version: int) -> "LoadedVersion":
        path = os.path.join(base_path, str(version))
        model = tf.saved_model.load(path)
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        loaded = cls(version, path, model, dict(model.signatures), dict(saved.meta_graphs[0].signature_def))
        loaded.warm_up()
        return loaded

    def warm_up(self) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` as TF Serving does, before the
        version is swapped in; returns the number of requests replayed."""
        path = os.path.join(self.path, "assets.extra", WARMUP_FILE)
        if not os.path.isfile(path):
            return 0
        replayed = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log_entry = prediction_log_pb2.PredictionLog.FromString(record)
            request = log_entry.predict_log.request
            fn = self.signatures[request.model_spec.signature_name or "serving_default"]
            fn(**_check_inputs(fn, request.inputs))
            replayed += 1
        return replayed


def _check_inputs(fn, inputs: dict) -> dict:
    """Request TensorProtos as tensors, checked against the signature's input specs."""
    specs = fn.structured_input_signature[1]
    missing = sorted(set(specs) - set(inputs))
    extra = sorted(set(inputs) - set(specs))
    problems = []
    if missing:
        problems.append(f"missing input(s): {', '.join(missing)}")
    if extra:
        problems.append(f"unknown input(s): {', '.join(extra)}")
    if problems:
        raise RequestError("; ".join(problems))
    tensors = {}
    for name, spec in specs.items():
        proto = inputs[name]
        if proto.dtype != spec.dtype.as_datatype_enum:
            got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "no dtype"
            raise RequestError(f"input {name!r}: expected dtype {spec.dtype.name}, got {got}")
        try:
            value = tf.make_ndarray(proto)
        except Exception as e:  # a TensorProto whose content does not match its shape
            raise RequestError(f"input {name!r}: malformed tensor: {e}") from None
        if not spec.shape.is_compatible_with(value.shape):
            want = [d if d is not None else "N" for d in spec.shape.as_list()]
            raise RequestError(f"input {name!r}: expected shape {want}, got {list(value.shape)}")
        tensors[name] = tf.constant(value, dtype=spec.dtype)
    return tensors


def _graph_message(error: tf.errors.OpError) -> str:
    """What a runtime error says, without TensorFlow's trace of where the node was defined: an
    assertion's own message, else the line naming the failing node's problem."""
    assertion = re.search(r"assertion failed: \[([^\]]*)\]", error.message)
    if assertion:
        return assertion.group(1)
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    for before, line in zip(lines, lines[1:]):
        if line.startswith("[[{{node"):
            return before[:500]
    return lines[-1][:500] if lines else type(error).__name__


class ModelServer(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    """Serves the newest version of one model; `poll()` picks up newly pushed versions."""

    def __init__(self, model_base_path: str, model_name: str):
        self.base_path = os.path.abspath(model_base_path)
        self.model_name = model_name
        self._current: LoadedVersion | None = None
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedVersion | None:
        return self._current

    def poll(self) -> bool:
        """Loads the newest complete version if it is newer than the one served; True if swapped."""
        versions = complete_versions(self.base_path)
        with self._lock:
            if not versions or (self._current and versions[-1] <= self._current.version):
                return False
            newest = versions[-1]
            try:
                loaded = LoadedVersion.load(self.base_path, newest)
            except Exception as e:  # a version still being written, or broken: keep serving the old one
                if newest not in self._failed:
                    log.warning("could not load version %s of %s (%s); will retry", newest, self.model_name, e)
                    self._failed.add(newest)
                return False
            self._current = loaded
            self._failed.discard(newest)
        log.info("serving %s version %s from %s", self.model_name, newest, loaded.path)
        return True

    def _servable(self, model_spec) -> LoadedVersion:
        current = self._current
        if model_spec.name != self.model_name:
            raise RequestError(f"unknown model {model_spec.name!r}; this server serves {self.model_name!r}",
                               grpc.StatusCode.NOT_FOUND)
        if current is None:
            raise RequestError(f"no version of {self.model_name!r} is loaded yet", grpc.StatusCode.UNAVAILABLE)
        if model_spec.HasField("version") and model_spec.version.value != current.version:
            raise RequestError(f"version {model_spec.version.value} of {self.model_name!r} is not served "
                               f"(serving version {current.version})", grpc.StatusCode.NOT_FOUND)
        return current

    def _answer(self, context, work):
        try:
            return work()
        except RequestError as e:
            context.abort(e.code, str(e))
        except tf.errors.InvalidArgumentError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _graph_message(e))

    # -- PredictionService ---------------------------------------------------------------------

    def Predict(self, request: predict_pb2.PredictRequest, context):
        def work():
            servable = self._servable(request.model_spec)
            name = request.model_spec.signature_name or "serving_default"
            fn = servable.signatures.get(name)
            if fn is None:
                raise RequestError(f"unknown signature {name!r}; the model has: {', '.join(sorted(servable.signatures))}")
            outputs = fn(**_check_inputs(fn, request.inputs))
            wanted = list(request.output_filter) or list(outputs)
            unknown = sorted(set(wanted) - set(outputs))
            if unknown:
                raise RequestError(f"unknown output(s) in output_filter: {', '.join(unknown)}")
            response = predict_pb2.PredictResponse()
            response.model_spec.name = self.model_name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = name
            for key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(outputs[key].numpy())))
            return response
        return self._answer(context, work)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        def work():
            servable = self._servable(request.model_spec)
            unsupported = sorted(set(request.metadata_field) - {SIGNATURE_DEF})
            if unsupported or not request.metadata_field:
                raise RequestError(f"metadata_field must be [{SIGNATURE_DEF!r}], got {list(request.metadata_field)}")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = self.model_name
            response.model_spec.version.value = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature_def in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature_def)
            response.metadata[SIGNATURE_DEF].Pack(signature_map)
            return response
        return self._answer(context, work)

    # -- ModelService --------------------------------------------------------------------------

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        def work():
            servable = self._servable(request.model_spec)
            response = get_model_status_pb2.GetModelStatusResponse()
            response.model_version_status.add(
                version=servable.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                status=status_pb2.StatusProto(error_code=0))
            return response
        return self._answer(context, work)


class Poller(threading.Thread):
    """Calls `server.poll()` every `seconds` until stopped (TF Serving's file system poll)."""

    def __init__(self, server: ModelServer, seconds: float):
        super().__init__(daemon=True, name="hap-serve-poller")
        self.server, self.seconds = server, seconds
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(self.seconds):
            self.server.poll()


@dataclasses.dataclass
class RunningServer:
    grpc_server: grpc.Server
    model_server: ModelServer
    poller: Poller
    port: int

    def stop(self, grace: float | None = 1.0) -> None:
        self.poller.stopped.set()
        self.grpc_server.stop(grace).wait()


def start(model_base_path: str, model_name: str = "hap", host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, poll_seconds: float = 1.0,
          threads: int = 8) -> RunningServer:
    """Loads the newest version and starts serving; port 0 picks a free port. Raises if there is
    no loadable version yet, so a typo in the path fails at once rather than on every request."""
    model_server = ModelServer(model_base_path, model_name)
    if not model_server.poll():
        raise FileNotFoundError(f"{model_server.base_path}: no loadable model version (expected "
                                "<model_base_path>/<version>/saved_model.pb, e.g. OUT/serving/hap)")
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(model_server, grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_server, grpc_server)
    bound = grpc_server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot bind {host}:{port}")
    grpc_server.start()
    poller = Poller(model_server, poll_seconds)
    poller.start()
    return RunningServer(grpc_server, model_server, poller, bound)
