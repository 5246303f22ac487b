"""A development server that speaks TF Serving's gRPC and REST APIs, for machines without TF Serving.

TF Serving's model server is not installable everywhere (it ships as a Docker image and a
Debian package of its own); this server lets tests, benchmarks and `hap query` run against the
same model base path with the same client code. It implements, from the tensorflow-serving-api
protos, PredictionService.Predict and .GetModelMetadata and ModelService.GetModelStatus, the
same three over TF Serving's REST API (serving/rest.py, on its own port), and TF Serving's
Prometheus metrics (serving/metrics.py):

- the versions it serves follow the model base path, as TF Serving's file-system source does:
  the complete versions under `<model_base_path>/<version>/` (complete once `saved_model.pb`
  exists: TFX's Pusher copies that file last) that the version policy selects, by default the
  newest one (`latest {num_versions: 1}`); `specific {versions: ...}` and `all {}` as in a TF
  Serving model config file, with version labels. Polling picks up a pushed version and, when
  the newest is removed, goes back to the one left (a rollback). A version is loaded and warmed
  up beside the served ones and swapped in atomically, so requests in flight finish on the
  version they started on;
- a version that fails to load or warm up is retried `max_load_retries` times with exponential
  back-off, then given up until its folder changes, and GetModelStatus reports it (END, with
  the error) while the served versions keep serving;
- malformed requests (unknown model, version or signature, a missing or extra input, a wrong
  dtype or shape, and whatever the graph rejects, such as N = 0 or N over the limit) are
  answered with INVALID_ARGUMENT (NOT_FOUND for an unknown model or version, as TF Serving does)
  and a message naming the problem.

It is for development and tests. Production uses TF Serving (see serving/README.md): this
server runs the model in one Python process and has no server-side batching.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2, saved_model_pb2
from google.protobuf import text_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc, status_pb2)
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from hap.serving.metrics import PREDICT, ServingMetrics
from hap.serving.model_versions import complete_versions
from hap.serving.rest import RestServer
from hap.serving.warmup import WARMUP_FILE

log = logging.getLogger("hap.serve")

DEFAULT_PORT = 8500
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SIGNATURE_DEF = "signature_def"
# TF Serving retries a failed load --max_num_load_retries=5 times; it waits a fixed minute between
# tries, this server backs off from RETRY_SECONDS (1, 2, 4, 8, 16 s) so tests need not wait.
MAX_LOAD_RETRIES = 5
RETRY_SECONDS = 1.0
VersionPolicy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy
LATEST_ONE = VersionPolicy(latest=VersionPolicy.Latest(num_versions=1))
State = get_model_status_pb2.ModelVersionStatus.State
# TF Serving labels request latency by entrypoint; the REST server's context names its own.
GRPC_ENTRYPOINT = "GRPC"


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
    warmup_seconds: float | None = None  # None: the version has no warm-up requests

    @classmethod
    def load(cls, base_path: str, version: int) -> "LoadedVersion":
        path = os.path.join(base_path, str(version))
        model = tf.saved_model.load(path)
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        loaded = cls(version, path, model, dict(model.signatures), dict(saved.meta_graphs[0].signature_def))
        started = time.perf_counter()
        if loaded.warm_up() is not None:
            loaded.warmup_seconds = time.perf_counter() - started
        return loaded

    def warm_up(self) -> int | None:
        """Replays `assets.extra/tf_serving_warmup_requests` as TF Serving does, before the
        version is swapped in; returns the number of requests replayed, None without the file."""
        path = os.path.join(self.path, "assets.extra", WARMUP_FILE)
        if not os.path.isfile(path):
            return None
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
        _check_declared_shape(name, proto, spec.dtype)
        try:
            value = tf.make_ndarray(proto)
        except Exception as e:  # a TensorProto whose content does not match its shape
            raise RequestError(f"input {name!r}: malformed tensor: {e}") from None
        if not spec.shape.is_compatible_with(value.shape):
            want = [d if d is not None else "N" for d in spec.shape.as_list()]
            raise RequestError(f"input {name!r}: expected shape {want}, got {list(value.shape)}")
        tensors[name] = tf.constant(value, dtype=spec.dtype)
    return tensors


# Where a TensorProto keeps its values when they are not packed in tensor_content.
_VALUE_FIELDS = {tf.string: "string_val", tf.float32: "float_val", tf.float64: "double_val",
                 tf.int32: "int_val", tf.int64: "int64_val", tf.bool: "bool_val"}


def _check_declared_shape(name: str, proto, dtype: tf.DType) -> None:
    """The declared shape must hold exactly the values the request carries, checked before any
    allocation: TensorFlow would fill a shape of 10,000,000 rows from one value."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise RequestError(f"input {name!r}: negative dimension in shape {dims}")
    if dtype not in _VALUE_FIELDS:
        return
    carried = (len(proto.tensor_content) // dtype.size if proto.tensor_content
               else len(getattr(proto, _VALUE_FIELDS[dtype])))
    declared = math.prod(dims)
    if carried != declared:
        raise RequestError(f"input {name!r}: shape {dims} holds {declared} values, the request carries {carried}")


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


def select_versions(policy: VersionPolicy, on_disk: list[int]) -> list[int]:
    """The versions of `on_disk` (ascending) that a TF Serving version policy serves."""
    choice = policy.WhichOneof("policy_choice") or "latest"
    if choice == "all":
        return list(on_disk)
    if choice == "specific":
        return [v for v in on_disk if v in set(policy.specific.versions)]
    return on_disk[-max(policy.latest.num_versions, 1):] if on_disk else []


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What `hap serve` takes from a TF Serving model config file (its one model)."""

    name: str
    base_path: str
    version_policy: VersionPolicy = dataclasses.field(default_factory=lambda: LATEST_ONE)
    version_labels: dict = dataclasses.field(default_factory=dict)


def load_model_config(path: str) -> ModelConfig:
    """A TF Serving `--model_config_file` (text ModelServerConfig) with one model; relative base
    paths are taken from the file's folder. Errors name the file and what is wrong."""
    config = model_server_config_pb2.ModelServerConfig()
    with open(path, encoding="utf-8") as f:
        try:
            text_format.Parse(f.read(), config)
        except text_format.ParseError as e:
            raise ValueError(f"{path}: not a TF Serving model config (ModelServerConfig text): {e}") from None
    models = list(config.model_config_list.config)
    if len(models) != 1:
        raise ValueError(f"{path}: hap serve serves one model; the file lists {len(models)}")
    model = models[0]
    if not model.name or not model.base_path:
        raise ValueError(f"{path}: the model needs a name and a base_path")
    policy = model.model_version_policy if model.HasField("model_version_policy") else LATEST_ONE
    if policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions:
        raise ValueError(f"{path}: model_version_policy specific lists no versions")
    labels = dict(model.version_labels)
    if labels and policy.WhichOneof("policy_choice") != "specific":
        # TF Serving's own rule: a label must name a version the policy keeps loaded.
        raise ValueError(f"{path}: version_labels need a 'specific' version policy listing their versions")
    unknown = {label: v for label, v in labels.items() if v not in set(policy.specific.versions)}
    if unknown:
        raise ValueError(f"{path}: version_labels {unknown} name versions the policy does not serve")
    base = model.base_path if os.path.isabs(model.base_path) else os.path.join(os.path.dirname(path), model.base_path)
    return ModelConfig(model.name, base, policy, labels)


@dataclasses.dataclass
class VersionState:
    """What GetModelStatus reports of a version: its state and, after a failed load, the error."""

    state: int
    error: str = ""
    attempts: int = 0
    retry_at: float = 0.0


class ModelServer(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    """Serves the versions of one model that its version policy selects on disk; `poll()` makes
    the served set follow the base path (see the module docstring). Versions outside the policy
    are unloaded only once a version it selects is serving, so a broken push or a rollback to a
    version that fails to load never leaves the model without a version."""

    def __init__(self, model_base_path: str, model_name: str, version_policy: VersionPolicy = LATEST_ONE,
                 version_labels: dict | None = None, max_load_retries: int = MAX_LOAD_RETRIES,
                 retry_seconds: float = RETRY_SECONDS):
        self.base_path = os.path.abspath(model_base_path)
        self.model_name = model_name
        self.version_policy = version_policy
        self.version_labels = dict(version_labels or {})
        self.max_load_retries = max_load_retries
        self.retry_seconds = retry_seconds
        # Replaced, never mutated, under the lock: a request reads one consistent snapshot.
        self._loaded: dict[int, LoadedVersion] = {}
        self._states: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        self.metrics = ServingMetrics()

    @property
    def current(self) -> LoadedVersion | None:
        """The newest served version (what a request naming no version gets)."""
        loaded = self._loaded
        return loaded[max(loaded)] if loaded else None

    def statuses(self) -> dict[int, VersionState]:
        return dict(self._states)

    def poll(self) -> bool:
        """Loads the versions the policy selects that are not served, unloads the served ones it
        no longer selects (removed from disk: a rollback); True if the served set changed."""
        on_disk = complete_versions(self.base_path)
        wanted = select_versions(self.version_policy, on_disk)
        with self._lock:
            loaded = dict(self._loaded)
            for version in set(self._states) - set(on_disk) - set(loaded):
                del self._states[version]  # a version re-pushed into a removed folder is tried afresh
            for version in sorted(set(wanted) - set(loaded), reverse=True):
                new = self._try_load(version)
                if new is not None:
                    loaded[version] = new
            # Availability first, as TF Serving: the old versions go once a wanted one serves.
            retired = sorted(set(loaded) - set(wanted)) if set(wanted) & set(loaded) else []
            for version in retired:
                del loaded[version]
                self._states[version] = VersionState(State.END)
                log.warning("unloaded %s version %s: %s", self.model_name, version,
                            "outside the version policy" if version in on_disk else "removed from the base path")
            changed = loaded.keys() != self._loaded.keys()
            self._loaded = loaded
        if changed:
            log.info("serving %s version(s) %s from %s", self.model_name, sorted(loaded), self.base_path)
        return changed

    def _try_load(self, version: int) -> LoadedVersion | None:
        state = self._states.setdefault(version, VersionState(State.LOADING))
        if (state.state == State.END and state.error) or time.monotonic() < state.retry_at:
            return None
        try:
            loaded = LoadedVersion.load(self.base_path, version)
        except Exception as e:  # a broken version: keep serving the others, retry with back-off, then give up
            state.attempts += 1
            state.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
            if state.attempts > self.max_load_retries:
                state.state = State.END
                log.error("giving up on %s version %s after %d attempts: %s", self.model_name, version,
                          state.attempts, state.error)
            else:
                delay = self.retry_seconds * 2 ** (state.attempts - 1)
                state.retry_at = time.monotonic() + delay
                log.warning("could not load %s version %s (%s); retry %d of %d in %.0f s", self.model_name, version,
                            state.error, state.attempts, self.max_load_retries, delay)
            return None
        self._states[version] = VersionState(State.AVAILABLE)
        if loaded.warmup_seconds is not None:
            self.metrics.record_warmup(loaded.path, loaded.warmup_seconds)
        return loaded

    def _servable(self, model_spec) -> LoadedVersion:
        loaded = self._loaded
        if model_spec.name != self.model_name:
            raise RequestError(f"unknown model {model_spec.name!r}; this server serves {self.model_name!r}",
                               grpc.StatusCode.NOT_FOUND)
        if not loaded:
            raise RequestError(f"no version of {self.model_name!r} is loaded yet", grpc.StatusCode.UNAVAILABLE)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            label = model_spec.version_label
            if label not in self.version_labels:
                raise RequestError(f"unknown version label {label!r} of {self.model_name!r}; the labels are "
                                   f"{sorted(self.version_labels)}")
            version = self.version_labels[label]
        elif choice == "version":
            version = model_spec.version.value
        else:
            return loaded[max(loaded)]
        if version not in loaded:
            raise RequestError(f"version {version} of {self.model_name!r} is not available (serving "
                               f"{sorted(loaded)})", grpc.StatusCode.NOT_FOUND)
        return loaded[version]

    def _answer(self, context, work, api: str | None = None, model_name: str = ""):
        """Runs `work`, answering a rejected request with its status; the requests of `api` are
        counted and timed (serving/metrics.py) whether they succeed or not."""
        started = time.perf_counter()
        code, message, response = grpc.StatusCode.UNKNOWN, "", None  # UNKNOWN: work() raised something else
        try:
            response = work()
            code = grpc.StatusCode.OK
        except RequestError as e:
            code, message = e.code, str(e)
        except tf.errors.InvalidArgumentError as e:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, _graph_message(e)
        finally:
            if api is not None:
                self.metrics.record_request(model_name, api, getattr(context, "entrypoint", GRPC_ENTRYPOINT),
                                            code.name, time.perf_counter() - started)
        if code != grpc.StatusCode.OK:
            context.abort(code, message)
        return response

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
        return self._answer(context, work, PREDICT, request.model_spec.name)

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
            spec = request.model_spec
            if spec.name != self.model_name:
                raise RequestError(f"unknown model {spec.name!r}; this server serves {self.model_name!r}",
                                   grpc.StatusCode.NOT_FOUND)
            states = self.statuses()
            choice = spec.WhichOneof("version_choice")
            if choice is not None:
                version = spec.version.value if choice == "version" else self._servable(spec).version
                if version not in states:
                    raise RequestError(f"version {version} of {self.model_name!r} is not known", grpc.StatusCode.NOT_FOUND)
                states = {version: states[version]}
            response = get_model_status_pb2.GetModelStatusResponse()
            for version, state in sorted(states.items()):
                response.model_version_status.add(
                    version=version, state=state.state,
                    status=status_pb2.StatusProto(error_code=error_codes_pb2.UNKNOWN if state.error else error_codes_pb2.OK,
                                                  error_message=state.error))
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
    rest_server: RestServer | None = None
    stopped: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def rest_port(self) -> int | None:
        return self.rest_server.port if self.rest_server else None

    def stop(self, grace: float | None = 1.0) -> None:
        """Stops taking requests on both APIs and lets those in flight finish, up to `grace`
        seconds (None: none may), draining both at once."""
        self.poller.stopped.set()
        grpc_stopped = self.grpc_server.stop(grace)  # returns at once; the event is set once drained
        if self.rest_server is not None:
            self.rest_server.stop(grace)
        grpc_stopped.wait()
        self.stopped.set()

    def wait_for_termination(self) -> None:
        """Returns once stop() has drained both APIs."""
        self.stopped.wait()


def start(model_base_path: str, model_name: str = "hap", host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, poll_seconds: float = 1.0,
          threads: int = 8, version_policy: VersionPolicy = LATEST_ONE, version_labels: dict | None = None,
          max_load_retries: int = MAX_LOAD_RETRIES, rest_api_port: int | None = None) -> RunningServer:
    """Loads the versions the policy selects and starts serving gRPC on `port` and, unless
    `rest_api_port` is None, REST and the metrics page on `rest_api_port`; port 0 picks a free
    port. Raises if no version loads, so a typo in the path fails at once rather than on every
    request."""
    model_server = ModelServer(model_base_path, model_name, version_policy, version_labels, max_load_retries)
    if not model_server.poll():
        errors = "; ".join(f"version {v}: {st.error}" for v, st in sorted(model_server.statuses().items()) if st.error)
        raise FileNotFoundError(f"{model_server.base_path}: no loadable model version (expected "
                                "<model_base_path>/<version>/saved_model.pb, e.g. OUT/serving/hap)"
                                + (f"; {errors}" if errors else ""))
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(model_server, grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_server, grpc_server)
    bound = grpc_server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot bind {host}:{port}")
    rest_server = None
    if rest_api_port is not None:
        try:
            rest_server = RestServer((host, rest_api_port), model_server, max_message_bytes)
        except OSError as e:
            grpc_server.stop(None)
            raise OSError(f"cannot bind {host}:{rest_api_port} for the REST API: {e.strerror or e}") from None
    grpc_server.start()
    if rest_server is not None:
        rest_server.start()
    poller = Poller(model_server, poll_seconds)
    poller.start()
    return RunningServer(grpc_server, model_server, poller, bound, rest_server)
