"""A development server that speaks TF Serving's gRPC and REST APIs, for machines without TF Serving.

TF Serving's model server is not installable everywhere (it ships as a Docker image and a
Debian package of its own); this server lets tests, benchmarks and `hap query` run against the
same model base path with the same client code. It implements, from the tensorflow-serving-api
protos, every method of TF Serving's PredictionService and ModelService: Predict,
GetModelMetadata, GetModelStatus and HandleReloadConfigRequest run; Classify, Regress and
MultiInference check the request as TF Serving does and refuse the cascade's signatures as it
does (INVALID_ARGUMENT: none takes tf.Examples under 'inputs'). The same over TF Serving's REST
API (serving/rest.py, on its own port), and TF Serving's Prometheus metrics (serving/metrics.py):

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
- every malformed request is answered with the status code TF Serving 2.16 answers it with
  (the table in docs/serving.md, "Status codes", from TF Serving's source) and a message naming the request
  field or input at fault, without a traceback in the log: INVALID_ARGUMENT for a missing
  model_spec, an unknown version label, output_filter key or input, a wrong dtype, shape or
  value, and whatever the graph rejects (N = 0, N over the limit); FAILED_PRECONDITION for an
  unknown signature; NOT_FOUND for an unknown model or version. Where TF Serving lets a
  malformed request through, this server refuses it (INVALID_ARGUMENT): a declared shape that
  does not hold exactly the values sent (TF Serving repeats the last value or drops the extra
  ones) and a numeric beyond the data contract's bound (request.numeric_problem).

It is for development and tests. Production uses TF Serving (docs/serving.md): this
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
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2, saved_model_pb2
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc, regression_pb2,
                                     status_pb2)
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from hap import storage
from hap.serving import request as rq
from hap.serving.metrics import CLASSIFY, PREDICT, REGRESS, ServingMetrics
from hap.serving.model_versions import complete_versions
from hap.serving.rest import RestServer
from hap.serving.warmup import WARMUP_FILE

log = logging.getLogger("hap.serve")

DEFAULT_PORT = 8500
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SIGNATURE_DEF = "signature_def"
DEFAULT_SIGNATURE = "serving_default"
# SignatureDef method names and the input and output keys TF Serving's Classify and Regress
# require (tensorflow/cc/saved_model/signature_constants.h).
CLASSIFY_METHOD, REGRESS_METHOD = "tensorflow/serving/classify", "tensorflow/serving/regress"
EXAMPLES_INPUT, CLASSES_OUTPUT, SCORES_OUTPUT, REGRESS_OUTPUT = "inputs", "classes", "scores", "outputs"
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
    # name -> the signature behind parsing and serializing (_proto_function), built at load
    proto_functions: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, base_path: str, version: int) -> "LoadedVersion":
        path = storage.join(base_path, str(version))
        model = tf.saved_model.load(path)
        saved = saved_model_pb2.SavedModel()
        with storage.open(storage.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        signatures = dict(model.signatures)
        loaded = cls(version, path, model, signatures, dict(saved.meta_graphs[0].signature_def),
                     proto_functions={name: _proto_function(fn) for name, fn in signatures.items()})
        started = time.perf_counter()
        if loaded.warm_up() is not None:
            loaded.warmup_seconds = time.perf_counter() - started
        return loaded

    def run(self, name: str, checked: dict) -> dict:
        """The outputs of signature `name` on `checked` (_check_inputs' TensorProtos), each a
        serialized TensorProto."""
        outputs = self.proto_functions[name](tf.constant([checked[n].SerializeToString() for n in sorted(checked)]))
        return {key: value.numpy() for key, value in outputs.items()}

    def warm_up(self) -> int | None:
        """Replays `assets.extra/tf_serving_warmup_requests` as TF Serving does, before the
        version is swapped in; returns the number of requests replayed, None without the file."""
        path = storage.join(self.path, "assets.extra", WARMUP_FILE)
        if not storage.isfile(path):
            return None
        replayed = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log_entry = prediction_log_pb2.PredictionLog.FromString(record)
            request = log_entry.predict_log.request
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            self.run(name, _check_inputs(self.signatures[name], request.inputs))
            replayed += 1
        return replayed


def _proto_function(fn):
    """`fn` taking its inputs as serialized TensorProtos (a string vector, in the order of their
    sorted names) and giving its outputs serialized: one call into TensorFlow per request, where
    converting each proto to a tensor in Python and each output back added a large part of the
    graph's own time (decision 0020). `tf.ensure_shape` gives the signature the static shapes it
    was traced with; _check_inputs has checked them already."""
    specs = fn.structured_input_signature[1]
    names = sorted(specs)

    def call(serialized):
        outputs = fn(**{name: tf.ensure_shape(tf.io.parse_tensor(serialized[i], specs[name].dtype), specs[name].shape)
                        for i, name in enumerate(names)})
        return {key: tf.io.serialize_tensor(value) for key, value in outputs.items()}

    return tf.function(call, input_signature=[tf.TensorSpec([len(names)], tf.string)],
                       autograph=False).get_concrete_function()


def _dtype_name(enum: int) -> str:
    """A TensorProto's dtype as a request may carry it: also 0 (unset) or an enum no dtype has."""
    if enum == types_pb2.DT_INVALID:
        return "no dtype (DT_INVALID)"
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"dtype enum {enum}, which is no TensorFlow dtype"


def _check_inputs(fn, inputs) -> dict:
    """The request's TensorProtos by input name, checked against the signature's input specs, in
    TF Serving's order (predict_util.cc, tensorflow/cc/saved_model/util.cc): the input names, then
    each tensor's dtype and declared shape, then (stricter than TF Serving) the values: the
    declared shape must hold exactly the values carried, and a numeric value must be finite and
    within the data contract's bound (request.numeric_problem). Only the numeric inputs' values
    are read here; the rest are parsed in the graph (_proto_function)."""
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
    checked = {}
    for name, spec in specs.items():
        proto = inputs[name]
        if proto.dtype != spec.dtype.as_datatype_enum:
            raise RequestError(f"input {name!r}: expected dtype {spec.dtype.name}, got {_dtype_name(proto.dtype)}")
        dims = _check_declared_shape(name, proto, spec.dtype)
        if not spec.shape.is_compatible_with(dims):
            want = [d if d is not None else "N" for d in spec.shape.as_list()]
            raise RequestError(f"input {name!r}: expected shape {want}, got {dims}")
        if spec.dtype.is_floating:
            problem = rq.numeric_problem(name, tf.make_ndarray(proto))
            if problem:
                raise RequestError(problem)
        checked[name] = proto
    return checked


# Where a TensorProto keeps its values when they are not packed in tensor_content.
_VALUE_FIELDS = {tf.string: "string_val", tf.float32: "float_val", tf.float64: "double_val",
                 tf.int32: "int_val", tf.int64: "int64_val", tf.bool: "bool_val"}


def _check_declared_shape(name: str, proto, dtype: tf.DType) -> list[int]:
    """The declared shape, which must hold exactly the values the request carries, checked before
    any allocation: TensorFlow would fill a shape of 10,000,000 rows from one value."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise RequestError(f"input {name!r}: negative dimension in shape {dims}")
    if dtype not in _VALUE_FIELDS:
        return dims
    if proto.tensor_content and len(proto.tensor_content) % dtype.size:
        raise RequestError(f"input {name!r}: malformed tensor: tensor_content holds {len(proto.tensor_content)} "
                           f"bytes, not a whole number of {dtype.name} values")
    carried = (len(proto.tensor_content) // dtype.size if proto.tensor_content
               else len(getattr(proto, _VALUE_FIELDS[dtype])))
    declared = math.prod(dims)
    if carried != declared:
        raise RequestError(f"input {name!r}: shape {dims} holds {declared} values, the request carries {carried}")
    return dims


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
    return model_config(models[0], path, os.path.dirname(path))


def model_config(model: model_server_config_pb2.ModelConfig, path: str, base_dir: str) -> ModelConfig:
    """What hap serve takes of one ModelConfig, checked; `path` names it in errors, relative base
    paths are taken from `base_dir`."""
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
    base = (model.base_path if os.path.isabs(model.base_path) or storage.is_remote(model.base_path)
            else os.path.join(base_dir, model.base_path))
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
        self.base_path = storage.absolute(model_base_path)
        self.model_name = model_name
        self.version_policy = version_policy
        self.version_labels = dict(version_labels or {})
        self.max_load_retries = max_load_retries
        self.retry_seconds = retry_seconds
        # Replaced, never mutated, under the lock: a request reads one consistent snapshot.
        self._loaded: dict[int, LoadedVersion] = {}
        self._states: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        self._config_lock = threading.Lock()  # one poll or reconfiguration at a time
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
        with self._config_lock:
            return self._poll_locked()

    def _poll_locked(self) -> bool:
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
        """The served version a ModelSpec names, resolved as TF Serving's ServerCore resolves it
        (server_core.cc, basic_manager.cc): no name is INVALID_ARGUMENT, an unknown label
        INVALID_ARGUMENT, an unknown model or a version not served NOT_FOUND."""
        loaded = self._loaded
        if not model_spec.name:
            raise RequestError("model_spec.name is empty: name the model (this server serves "
                               f"{self.model_name!r})")
        if model_spec.name != self.model_name:
            raise RequestError(f"unknown model {model_spec.name!r}; this server serves {self.model_name!r}",
                               grpc.StatusCode.NOT_FOUND)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            label = model_spec.version_label
            labels = self.version_labels
            if label not in labels:
                raise RequestError(f"unknown version label {label!r} of {self.model_name!r}; the labels are "
                                   f"{sorted(labels)}")
            version = labels[label]
        elif choice == "version":
            version = model_spec.version.value
        elif loaded:
            return loaded[max(loaded)]
        else:
            raise RequestError(f"no version of {self.model_name!r} is loaded", grpc.StatusCode.NOT_FOUND)
        if version not in loaded:
            raise RequestError(f"version {version} of {self.model_name!r} is not available (serving "
                               f"{sorted(loaded)})", grpc.StatusCode.NOT_FOUND)
        return loaded[version]

    def _answer(self, context, work, api: str | None = None, model_name: str = ""):
        """Runs `work`, answering a rejected request with its status; the requests of `api` are
        counted and timed (serving/metrics.py) whether they succeed or not. A rejected request,
        UNIMPLEMENTED included, is answered with its message and logs no traceback."""
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
            servable = self._servable(_model_spec(request))
            name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            fn = servable.signatures.get(name)
            if fn is None:
                # TF Serving's code for it (predict_util.cc); its REST API says INVALID_ARGUMENT.
                raise RequestError(f"unknown signature {name!r}; the model has: {', '.join(sorted(servable.signatures))}",
                                   grpc.StatusCode.FAILED_PRECONDITION)
            checked = _check_inputs(fn, request.inputs)
            wanted = _output_filter(request.output_filter, servable.signature_defs[name])
            outputs = servable.run(name, checked)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = self.model_name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = name
            for key in wanted:
                response.outputs[key].ParseFromString(outputs[key])
            return response
        return self._answer(context, work, PREDICT, request.model_spec.name)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        def work():
            spec = _model_spec(request)
            # The fields first, then the model, as TF Serving (get_model_metadata_impl.cc).
            if not request.metadata_field:
                raise RequestError(f"metadata_field is empty: ask for {SIGNATURE_DEF!r}, the one field served")
            unsupported = sorted(set(request.metadata_field) - {SIGNATURE_DEF})
            if unsupported:
                raise RequestError(f"metadata_field {', '.join(map(repr, unsupported))} is not supported; the one "
                                   f"field served is {SIGNATURE_DEF!r}")
            servable = self._servable(spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = self.model_name
            response.model_spec.version.value = servable.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, signature_def in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(signature_def)
            response.metadata[SIGNATURE_DEF].Pack(signature_map)
            return response
        return self._answer(context, work)

    def _example_signature(self, request, kind: str) -> tuple[LoadedVersion, str]:
        """The version and the signature a Classify or Regress request names, checked as TF
        Serving checks them (classifier.cc, regressor.cc: its signature method-name check is
        off by default, so only the signature's inputs and outputs count)."""
        servable = self._servable(_model_spec(request))
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature_def = servable.signature_defs.get(name)
        if signature_def is None or name.startswith("__"):
            raise RequestError(f"unknown signature {name!r}; the model has: {', '.join(sorted(servable.signatures))}")
        problem = _example_signature_problem(signature_def, kind)
        if problem:
            raise RequestError(f"signature {name!r} cannot {kind}: {problem}")
        return servable, name

    def Classify(self, request: classification_pb2.ClassificationRequest, context):
        def work():
            _, name = self._example_signature(request, "classify")
            raise RequestError(f"signature {name!r} is a classification signature, which hap serve does not run "
                               "(the HAP cascade has none; TF Serving runs them)", grpc.StatusCode.UNIMPLEMENTED)
        return self._answer(context, work, CLASSIFY, request.model_spec.name)

    def Regress(self, request: regression_pb2.RegressionRequest, context):
        def work():
            _, name = self._example_signature(request, "regress")
            raise RequestError(f"signature {name!r} is a regression signature, which hap serve does not run "
                               "(the HAP cascade has none; TF Serving runs them)", grpc.StatusCode.UNIMPLEMENTED)
        return self._answer(context, work, REGRESS, request.model_spec.name)

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context):
        """Checked as TF Serving checks it (multi_inference.cc, multi_inference_helper.cc): the
        model of the first task, then each task's model, signature and method."""
        def work():
            if not request.tasks:
                raise RequestError("the request has no tasks: each names a model, a signature and a method_name")
            first = request.tasks[0].model_spec
            servable = self._servable(first)
            seen = set()
            for i, task in enumerate(request.tasks):
                spec = task.model_spec
                if not spec.name:
                    raise RequestError(f"tasks[{i}].model_spec.name is empty: every task names the model")
                if spec.name != first.name:
                    raise RequestError(f"tasks[{i}] names model {spec.name!r}, tasks[0] {first.name!r}: every task "
                                       "of a MultiInferenceRequest names the same model")
                name = spec.signature_name or DEFAULT_SIGNATURE
                if name in seen:
                    raise RequestError(f"tasks[{i}]: signature {name!r} is asked for twice")
                seen.add(name)
                signature_def = servable.signature_defs.get(name)
                if signature_def is None or name.startswith("__"):
                    raise RequestError(f"tasks[{i}]: unknown signature {name!r}; the model has: "
                                       f"{', '.join(sorted(servable.signatures))}")
                kind = {CLASSIFY_METHOD: "classify", REGRESS_METHOD: "regress"}.get(task.method_name)
                if kind is None:
                    raise RequestError(f"tasks[{i}].method_name {task.method_name!r} is not supported: MultiInference "
                                       f"runs {CLASSIFY_METHOD!r} and {REGRESS_METHOD!r} tasks",
                                       grpc.StatusCode.UNIMPLEMENTED)
                problem = _example_signature_problem(signature_def, kind)
                if problem:
                    raise RequestError(f"tasks[{i}]: signature {name!r} cannot {kind}: {problem}")
            raise RequestError("MultiInference runs classification and regression signatures, which hap serve does "
                               "not run (the HAP cascade has none; TF Serving runs them)", grpc.StatusCode.UNIMPLEMENTED)
        return self._answer(context, work)

    # -- ModelService --------------------------------------------------------------------------

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        """As TF Serving's (get_model_status_impl.cc): every version the server knows of, or the
        one `version` names; a `version_label` is not resolved, so it gets every version."""
        def work():
            spec = _model_spec(request)
            if spec.name != self.model_name:
                raise RequestError(f"unknown model {spec.name!r}; this server serves {self.model_name!r}",
                                   grpc.StatusCode.NOT_FOUND)
            states = self.statuses()
            if spec.WhichOneof("version_choice") == "version":
                version = spec.version.value
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

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        """Takes a new model config, as TF Serving does (model_service_impl.cc): its base path,
        version policy and labels replace the served model's, the versions it selects are loaded
        before the answer, and a label must name a version then available (else
        FAILED_PRECONDITION, the labels left as they were). One model, of the same name: hap
        serve serves one model (UNIMPLEMENTED otherwise)."""
        def work():
            if request.config.WhichOneof("config") != "model_config_list":
                raise RequestError("config: only a model_config_list is supported (as in TF Serving)")
            models = list(request.config.model_config_list.config)
            if len(models) != 1:
                raise RequestError(f"config.model_config_list lists {len(models)} models; hap serve serves one",
                                   grpc.StatusCode.UNIMPLEMENTED)
            try:
                config = model_config(models[0], "config.model_config_list.config[0]", os.getcwd())
            except ValueError as e:
                raise RequestError(str(e)) from None
            if config.name != self.model_name:
                raise RequestError(f"config.model_config_list.config[0].name is {config.name!r}; hap serve serves "
                                   f"{self.model_name!r} and does not rename it (restart it to serve another model)",
                                   grpc.StatusCode.UNIMPLEMENTED)
            self.reconfigure(config)
            return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=error_codes_pb2.OK))
        return self._answer(context, work)

    def reconfigure(self, config: "ModelConfig") -> None:
        """Serves `config`'s base path and version policy, loading what it selects now; then takes
        its labels if each names a version available, else raises FAILED_PRECONDITION."""
        with self._config_lock:
            self.base_path = storage.absolute(config.base_path)
            self.version_policy = config.version_policy
            self._poll_locked()
            unavailable = {label: v for label, v in config.version_labels.items() if v not in self._loaded}
            if unavailable:
                raise RequestError(f"version_labels {unavailable} name versions that are not available (serving "
                                   f"{sorted(self._loaded)}); the labels stay {self.version_labels}",
                                   grpc.StatusCode.FAILED_PRECONDITION)
            self.version_labels = dict(config.version_labels)
        log.info("reloaded the config of %s: %s, %s, labels %s", self.model_name, self.base_path,
                 text_format.MessageToString(self.version_policy, as_one_line=True) or "latest 1", self.version_labels)


def _model_spec(request):
    """The request's ModelSpec; a request without one is INVALID_ARGUMENT, as in TF Serving."""
    if not request.HasField("model_spec"):
        raise RequestError("the request has no model_spec: name the model to ask")
    return request.model_spec


def _output_filter(output_filter, signature_def) -> list[str]:
    """The outputs a Predict request asks for, checked as TF Serving checks them (predict_util.cc):
    each a key of the signature, none twice; all of them when the filter is empty."""
    wanted = list(output_filter)
    for key in wanted:
        if key not in signature_def.outputs:
            raise RequestError(f"output_filter: {key!r} is not an output of the signature; its outputs are "
                               f"{', '.join(sorted(signature_def.outputs))}")
    duplicates = sorted({key for key in wanted if wanted.count(key) > 1})
    if duplicates:
        raise RequestError(f"output_filter: {', '.join(map(repr, duplicates))} named twice")
    return wanted or list(signature_def.outputs)


def _example_signature_problem(signature_def, kind: str) -> str | None:
    """Why TF Serving's Classify ("classify") or Regress ("regress") cannot run a signature
    (PreProcessClassification, PreProcessRegression), or None."""
    inputs, outputs = sorted(signature_def.inputs), sorted(signature_def.outputs)
    if len(inputs) != 1:
        shown = ", ".join(inputs[:4]) + (", ..." if len(inputs) > 4 else "")
        return (f"it has {len(inputs)} inputs ({shown}); a {kind} signature has one, {EXAMPLES_INPUT!r}, of "
                "serialized tf.Examples")
    if kind == "classify" and len(outputs) not in (1, 2):
        return f"it has {len(outputs)} outputs; a classify signature has {CLASSES_OUTPUT!r}, {SCORES_OUTPUT!r} or both"
    if kind == "regress" and len(outputs) != 1:
        return f"it has {len(outputs)} outputs ({', '.join(outputs)}); a regress signature has one, {REGRESS_OUTPUT!r}"
    if EXAMPLES_INPUT not in signature_def.inputs:
        return f"its input is {inputs[0]!r}; a {kind} signature's is {EXAMPLES_INPUT!r}"
    if kind == "classify" and not {CLASSES_OUTPUT, SCORES_OUTPUT} & set(outputs):
        return f"its outputs are {', '.join(outputs)}; a classify signature has {CLASSES_OUTPUT!r}, {SCORES_OUTPUT!r} or both"
    if kind == "regress" and REGRESS_OUTPUT not in signature_def.outputs:
        return f"its output is {outputs[0]!r}; a regress signature's is {REGRESS_OUTPUT!r}"
    return None


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
          max_load_retries: int = MAX_LOAD_RETRIES, rest_api_port: int | None = None,
          metrics_path: str | None = None) -> RunningServer:
    """Loads the versions the policy selects and starts serving gRPC on `port` and, unless
    `rest_api_port` is None, REST on `rest_api_port` with the Prometheus page at `metrics_path`
    (None: none, TF Serving's default; metrics.load_monitoring_config reads its config file);
    port 0 picks a free port. Raises if no version loads, so a typo in the path fails at once
    rather than on every request."""
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
            rest_server = RestServer((host, rest_api_port), model_server, max_message_bytes, metrics_path)
        except OSError as e:
            grpc_server.stop(None)
            raise OSError(f"cannot bind {host}:{rest_api_port} for the REST API: {e.strerror or e}") from None
    grpc_server.start()
    if rest_server is not None:
        rest_server.start()
    poller = Poller(model_server, poll_seconds)
    poller.start()
    return RunningServer(grpc_server, model_server, poller, bound, rest_server)
