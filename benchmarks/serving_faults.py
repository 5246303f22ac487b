"""Faults and load against `hap serve` on loopback, as an operator would try them: bad-input
classes, a hot swap under a steady stream, a corrupt version, a rollback, a SIGTERM drain and a
bounded concurrent load (issue 14). Prints the results as markdown tables.

    .venv/bin/python benchmarks/serving_faults.py --model-base-path demo/run/serving/hap --data demo/data
    .venv/bin/python benchmarks/serving_faults.py --build /tmp/faults   # a tiny model, as the tests build it

The newest version of --model-base-path is copied into a scratch base path (versions 1 and 2
are that copy), which the script then changes under the running server as TFX's Pusher and an
operator would: it pushes a version, pushes a corrupt one, removes versions. The server is
`hap serve` in a subprocess of its own (gRPC and REST on free loopback ports, the deployment's
monitoring config, polling every 0.5 s), so its CPU time can be read from /proc. Requests are
the data's funnel/ requests cut or cycled to --n candidates, as in serving_latency.py. Nothing
listens beyond 127.0.0.1.

A "valid request" is one the server must answer OK; any other answer to one is a failure. The
only requests allowed to fail are those sent after SIGTERM, which a draining server refuses
(UNAVAILABLE, or CANCELLED when grpcio had accepted the call but not yet started it).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import grpc
import numpy as np
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2, inference_pb2,
                                     model_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as result_files  # noqa: E402
from serving_latency import build_requests  # noqa: E402  (a sibling script)

from hap.data import contract as c  # noqa: E402
from hap.serving import cascade, model_versions  # noqa: E402
from hap.serving import request as rq  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONITORING_CONFIG = os.path.join(REPO, "serving", "tf_serving", "monitoring.config")
POLL_SECONDS = 0.5
OK, INVALID, NOT_FOUND, PRECONDITION, UNIMPLEMENTED = (
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)


# -- a tiny model, as the tests build it (conftest.py) -------------------------------------------

def build_tiny_model(out: str) -> tuple[str, str]:
    """Simulates the tests' end-to-end data (150 requests, 3 funnel requests) and runs the pipeline
    on it with their quick Trainer settings and no AUC floor; returns (model base path, data)."""
    from hap.data import simulator
    from hap.data.sample_routing import SAMPLE_ROUTING
    from hap.pipeline import local_runner

    data, run = os.path.join(out, "data"), os.path.join(out, "run")
    base = os.path.join(run, "serving", "hap")
    if model_versions.complete_versions(base):
        return base, data
    if not os.path.isdir(data):
        simulator.simulate(data, simulator.SimulationConfig(requests=150, funnel_requests=3, seed=3), progress=False)
    quick = {"max_epochs": 2, "patience": 1, "batch_size": 512}
    floors = {model: dict.fromkeys(routing.contrasts, 0.0) for model, routing in SAMPLE_ROUTING.items()}
    local_runner.run(data, run, light_trainer=quick, heavy_trainer=quick, auc_floors=floors)
    return base, data


# -- the server and its base path ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def push(model_dir: str, base: str, version: int, corrupt: bool = False) -> None:
    """Copies a SavedModel to <base>/<version>/ as TFX's Pusher does, saved_model.pb last (into a
    hidden folder first, so the server never sees a half-copied variables/). A corrupt version is
    a valid saved_model.pb without its variables/: parseable, but it fails to load."""
    staging = os.path.join(base, f".staging-{version}")
    ignore = shutil.ignore_patterns("saved_model.pb", *(["variables"] if corrupt else []))
    shutil.copytree(model_dir, staging, ignore=ignore)
    os.rename(staging, os.path.join(base, str(version)))
    shutil.copy(os.path.join(model_dir, "saved_model.pb"), os.path.join(base, str(version)))


class Server:
    """`hap serve` in a subprocess, its output in a log file."""

    def __init__(self, base: str, log_path: str, drain_seconds: float = 30.0):
        self.port, self.rest_port = _free_port(), _free_port()
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hap.cli", "serve", base, "--host", "127.0.0.1", "--port", str(self.port),
             "--rest-api-port", str(self.rest_port), "--monitoring-config-file", MONITORING_CONFIG,
             "--poll-seconds", str(POLL_SECONDS), "--drain-seconds", str(drain_seconds)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}",
                                             options=[("grpc.max_receive_message_length", 64 << 20)])
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def wait_serving(self, version: int, timeout: float = 600.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hap serve exited ({self.process.returncode}); see {self.log_path}")
            if self.states().get(version) == "AVAILABLE":
                return
            time.sleep(0.5)
        raise TimeoutError(f"version {version} never became AVAILABLE; see {self.log_path}")

    def states(self) -> dict[int, str]:
        try:
            response = self.models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
                model_spec=model_pb2.ModelSpec(name="hap")), timeout=10)
        except grpc.RpcError:
            return {}
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return {s.version: names(s.state) for s in response.model_version_status}

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def log_text(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


# -- traffic -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Answer:
    started: float
    seconds: float
    code: grpc.StatusCode
    version: int = 0


class Stream:
    """`clients` threads sending valid requests back to back (or `count` each) until stopped; with
    `until_refused`, a client stops at its first answer that is not OK (as one that finds the
    server gone does)."""

    def __init__(self, server: Server, requests: list, clients: int, count: int | None = None,
                 until_refused: bool = False):
        self.server, self.requests, self.count, self.until_refused = server, requests, count, until_refused
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, client: int) -> None:
        i = 0
        while not self._stop.is_set() and (self.count is None or i < self.count):
            request = self.requests[(client + i) % len(self.requests)]
            started = time.perf_counter()
            try:
                response = self.server.predict.Predict(request, timeout=120)
                answer = Answer(started, time.perf_counter() - started, OK, response.model_spec.version.value)
            except grpc.RpcError as e:
                answer = Answer(started, time.perf_counter() - started, e.code())
            self.answers.append(answer)
            i += 1
            if self.until_refused and answer.code != OK:
                return

    def __enter__(self) -> "Stream":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.join()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def failed(self, answers: list[Answer] | None = None) -> int:
        return sum(a.code != OK for a in (self.answers if answers is None else answers))

    def wait_for_version(self, version: int, timeout: float = 600.0) -> float:
        """Seconds until an answer came from `version`."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if any(a.version == version for a in self.answers[-20:]):
                return time.perf_counter() - start
            time.sleep(0.05)
        raise TimeoutError(f"no answer from version {version} in {timeout:.0f} s")


def percentiles(answers: list[Answer]) -> tuple[float, float]:
    ms = np.array([a.seconds for a in answers if a.code == OK]) * 1000
    return (float(np.percentile(ms, 50)), float(np.percentile(ms, 99))) if len(ms) else (float("nan"),) * 2


# -- bad inputs ----------------------------------------------------------------------------------

def bad_input_classes(good: dict, features: c.FeatureSet) -> list[tuple]:
    """(class, call, expected code, words the message must contain): one request of each class.
    `call` is (method, request) for gRPC or ("REST", verb, path, body)."""
    feats = features.features
    user = next(f.name for f in feats if f.role == c.USER and f.kind == c.CATEGORICAL)
    user_numeric = next(f.name for f in feats if rq.is_request_level(f) and f.kind == c.NUMERIC)
    item_numeric = next(f.name for f in feats if not rq.is_request_level(f) and f.kind == c.NUMERIC)
    layout = rq.RequestLayout(features)

    def predict(inputs=None, **spec) -> predict_pb2.PredictRequest:
        request = rq.predict_request("hap", "cascade", good if inputs is None else inputs)
        for key, value in spec.items():
            if key == "output_filter":
                request.output_filter.extend(value)
            elif key == "version":
                request.model_spec.version.value = value
            else:
                setattr(request.model_spec, key, value)
        return request

    def tensor(name: str, **fields) -> predict_pb2.PredictRequest:
        request = predict()
        for key, value in fields.items():
            if key == "rows":
                request.inputs[name].tensor_shape.dim[0].size = value
            else:
                setattr(request.inputs[name], key, value)
        return request

    absurd = good[item_numeric].copy()
    absurd[1] = 1e30
    columns = {name: value.tolist() for name, value in good.items()}
    spec = model_pb2.ModelSpec(name="hap")
    return [
        ("no model_spec", ("Predict", predict_pb2.PredictRequest()), INVALID, "model_spec"),
        ("unknown model name", ("Predict", predict(name="rank")), NOT_FOUND, "'rank'"),
        ("unknown version", ("Predict", predict(version=7)), NOT_FOUND, "version 7"),
        ("unknown version_label", ("Predict", predict(version_label="nightly")), INVALID, "'nightly'"),
        ("unknown signature", ("Predict", predict(signature_name="rank_everything")), PRECONDITION,
         "'rank_everything'"),
        ("duplicate output_filter", ("Predict", predict(output_filter=["scores", "scores"])), INVALID, "'scores'"),
        ("unknown output_filter key", ("Predict", predict(output_filter=["score"])), INVALID, "'score'"),
        ("missing input", ("Predict", predict({k: v for k, v in good.items() if k != "item_id"})), INVALID, "item_id"),
        ("unknown input", ("Predict", predict({**good, "u_colour": np.array(["red"], object)})), INVALID, "u_colour"),
        ("wrong dtype", ("Predict", predict({**good, item_numeric: good[item_numeric].astype(str).astype(object)})),
         INVALID, item_numeric),
        ("unknown dtype enum (999)", ("Predict", tensor(item_numeric, dtype=999)), INVALID, item_numeric),
        ("negative dimension", ("Predict", tensor(user, rows=-1)), INVALID, user),
        ("declared 10,000,000 rows, 1 value sent", ("Predict", tensor(user, rows=10_000_000)), INVALID, user),
        ("a user feature with 3 rows", ("Predict", predict({**good, user: np.repeat(good[user], 3)})), INVALID, user),
        ("no candidates (N = 0)", ("Predict", predict(layout.missing(0))), INVALID, "N = 0"),
        ("too many rows (N = 5001)", ("Predict", predict(layout.missing(5001))), INVALID, "5000"),
        ("infinite user numeric", ("Predict", predict({**good, user_numeric: np.array([np.inf], np.float32)})),
         INVALID, user_numeric),
        ("absurd item numeric (1e30) in one candidate", ("Predict", predict({**good, item_numeric: absurd})), INVALID,
         item_numeric),
        ("Classify (the cascade has no classification signature)",
         ("Classify", classification_pb2.ClassificationRequest(model_spec=spec)), INVALID, "'serving_default'"),
        ("Regress", ("Regress", regression_pb2.RegressionRequest(model_spec=spec)), INVALID, "'serving_default'"),
        ("MultiInference with a predict task", ("MultiInference", inference_pb2.MultiInferenceRequest(tasks=[
            inference_pb2.InferenceTask(model_spec=spec, method_name="tensorflow/serving/predict")])), UNIMPLEMENTED,
         "method_name"),
        ("GetModelMetadata without metadata_field",
         ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec)), INVALID,
         "metadata_field"),
        ("REST: unknown signature", ("REST", "POST", "/v1/models/hap:predict",
                                     {"signature_name": "rank_everything", "inputs": columns}), 400, "'rank_everything'"),
        ("REST: a string for a float", ("REST", "POST", "/v1/models/hap:predict", {
            "inputs": {**columns, item_numeric: ["x"] * len(columns[item_numeric])}}), 400, item_numeric),
        ("REST: absurd user numeric (1e30)", ("REST", "POST", "/v1/models/hap:predict", {
            "inputs": {**columns, user_numeric: [1e30]}}), 400, user_numeric),
        ("REST: :classify", ("REST", "POST", "/v1/models/hap:classify", {"examples": [{"item_id": "1"}]}), 400,
         "'serving_default'"),
    ]


def rest(server: Server, verb: str, path: str, body=None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data, method=verb)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
            return response.status, json.loads(raw) if response.headers.get_content_type() == "application/json" else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def run_bad_inputs(server: Server, good: dict, features: c.FeatureSet) -> list[dict]:
    rows = []
    for name, call, expected, words in bad_input_classes(good, features):
        started = time.perf_counter()
        if call[0] == "REST":
            code, document = rest(server, *call[1:])
            message = document.get("error", "")
        else:
            method, request = call
            service = server.models if method == "GetModelStatus" else server.predict
            try:
                getattr(service, method)(request, timeout=120)
                code, message = OK, ""
            except grpc.RpcError as e:
                code, message = e.code(), e.details()
        rows.append({"class": name, "expected": getattr(expected, "name", expected), "got": getattr(code, "name", code),
                     "names_it": words in message, "ms": (time.perf_counter() - started) * 1000,
                     "message": message})
    return rows


# -- the scenarios -------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-base-path", help="a model base path with a pushed cascade, e.g. demo/run/serving/hap")
    source.add_argument("--build", metavar="DIR", help="build a tiny model into DIR as the tests do (about 3 min)")
    parser.add_argument("--data", help="the dataset the requests come from (default with --build: the built one)")
    parser.add_argument("--n", type=int, default=1000, help="candidates per request")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the load test")
    parser.add_argument("--requests", type=int, default=200, help="requests per client of the load test")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle window for the CPU reading")
    parser.add_argument("--out", help="also write the results as JSON to OUT/serving_faults.json")
    args = parser.parse_args()
    if args.build:
        base_in, data = build_tiny_model(args.build)
        data = args.data or data
    else:
        base_in, data = args.model_base_path, args.data
        if not data:
            parser.error("--data is needed with --model-base-path")
    model_dir = model_versions.newest_complete_version(base_in)
    with open(os.path.join(model_dir, "assets.extra", cascade.INFO_FILE)) as f:
        features = c.parse_features({"version": 1, "features": json.load(f)["features"]}, cascade.INFO_FILE)
    arrays = build_requests(data, features, args.n, count=20)
    requests = [rq.predict_request("hap", "cascade", a) for a in arrays]
    scratch = tempfile.mkdtemp(prefix="hap-serving-faults-")
    base = os.path.join(scratch, "hap")
    os.makedirs(base)
    push(model_dir, base, 1)
    print(f"model {model_dir}, N = {args.n}; scratch base path {base}", flush=True)
    results: dict = {"n": args.n, "model": model_dir}
    server = Server(base, os.path.join(scratch, "hap_serve.log"))
    try:
        server.wait_serving(1)
        status = {name: rest(server, "GET", path)[0] for name, path in (
            ("status", "/v1/models/hap"), ("metadata", "/v1/models/hap/metadata"),
            ("metrics", "/monitoring/prometheus/metrics"))}
        status["predict"] = rest(server, "POST", "/v1/models/hap:predict",
                                 {"inputs": {k: v.tolist() for k, v in arrays[0].items()}})[0]
        results["rest"] = status
        print(f"REST: {status}", flush=True)

        print("bad inputs ...", flush=True)
        results["bad_inputs"] = run_bad_inputs(server, arrays[0], features)
        results["tracebacks_after_bad_inputs"] = server.log_text().count("Traceback")

        print("hot swap: pushing version 2 under 2 streaming clients ...", flush=True)
        with Stream(server, requests, clients=2) as stream:
            time.sleep(2.0)
            push(model_dir, base, 2)
            swap_seconds = stream.wait_for_version(2)
            time.sleep(1.0)
        p50, p99 = percentiles(stream.answers)
        results["hot_swap"] = {"requests": len(stream.answers), "failed": stream.failed(),
                               "seconds_to_new_version": swap_seconds, "p50_ms": p50, "p99_ms": p99,
                               "versions": sorted({a.version for a in stream.answers if a.code == OK})}

        print("corrupt version 3 (no variables/) under 1 streaming client ...", flush=True)
        cpu_before = server.cpu_seconds()
        with Stream(server, requests, clients=1) as stream:
            push(model_dir, base, 3, corrupt=True)
            deadline = time.time() + 120
            while time.time() < deadline and server.states().get(3) != "END":
                time.sleep(0.5)
        given_up = server.states().get(3)
        loads = len(re.findall(r"could not load hap version 3", server.log_text()))
        gave_up = len(re.findall(r"giving up on hap version 3", server.log_text()))
        idle_start, idle_time = server.cpu_seconds(), time.perf_counter()
        time.sleep(args.idle_seconds)
        idle_cores = (server.cpu_seconds() - idle_start) / (time.perf_counter() - idle_time)
        loads_later = len(re.findall(r"could not load hap version 3", server.log_text()))
        results["corrupt_version"] = {
            "requests": len(stream.answers), "failed": stream.failed(), "state": given_up,
            "failed_loads": loads + gave_up, "failed_loads_during_idle": loads_later - loads,
            "cpu_seconds_while_retrying": idle_start - cpu_before, "idle_cores": idle_cores,
            "served_versions": sorted({a.version for a in stream.answers if a.code == OK})}

        print("rollback: removing version 3, then the newest good one (2) ...", flush=True)
        with Stream(server, requests, clients=2) as stream:
            shutil.rmtree(os.path.join(base, "3"))
            time.sleep(2 * POLL_SECONDS + 0.5)
            shutil.rmtree(os.path.join(base, "2"))
            rollback_seconds = stream.wait_for_version(1)
            time.sleep(1.0)
        results["rollback"] = {"requests": len(stream.answers), "failed": stream.failed(),
                               "seconds_to_previous_version": rollback_seconds, "states": server.states(),
                               "versions": sorted({a.version for a in stream.answers if a.code == OK})}

        print(f"load: {args.clients} clients x {args.requests} requests ...", flush=True)
        load_start = time.perf_counter()
        stream = Stream(server, requests, clients=args.clients, count=args.requests)
        with stream:
            stream.join()
        wall = time.perf_counter() - load_start
        p50, p99 = percentiles(stream.answers)
        single = Stream(server, requests, clients=1, count=50)
        with single:
            single.join()
        s50, s99 = percentiles(single.answers)
        results["load"] = {"clients": args.clients, "requests": len(stream.answers), "failed": stream.failed(),
                           "p50_ms": p50, "p99_ms": p99, "requests_per_s": len(stream.answers) / wall,
                           "one_client_p50_ms": s50, "one_client_p99_ms": s99}

        print("SIGTERM under 3 streaming clients ...", flush=True)
        stream = Stream(server, requests, clients=3, until_refused=True)
        with stream:
            time.sleep(2.0)
            term_at = time.perf_counter()
            server.process.send_signal(signal.SIGTERM)
            drained = None
            while server.process.poll() is None and time.perf_counter() - term_at < 120:
                if drained is None and "hap serve: stopped" in server.log_text():
                    drained = time.perf_counter() - term_at  # both APIs drained; the interpreter exits next
                time.sleep(0.02)
            exit_code = server.process.wait(timeout=10)
            exited = time.perf_counter() - term_at
            time.sleep(0.5)
        in_flight = [a for a in stream.answers if a.started < term_at < a.started + a.seconds]
        before = [a for a in stream.answers if a.started + a.seconds <= term_at]
        after = [a for a in stream.answers if a.started >= term_at]
        results["sigterm"] = {
            "exit_code": exit_code, "drain_seconds": drained, "exit_seconds": exited, "answered_before": len(before),
            "failed_before": stream.failed(before), "in_flight": len(in_flight),
            "in_flight_failed": stream.failed(in_flight), "refused_after": len(after),
            "refused_codes": sorted({a.code.name for a in after})}
        log = server.log_text()
        results["tracebacks_in_log"] = log.count("Traceback")
    finally:
        server.stop()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        report(results)
    print(printed.getvalue(), end="")
    scenarios, bad_inputs = printed.getvalue().split("tracebacks in the server log over the whole run.")
    command = result_files.command_line()
    result_files.write_result("serving_faults", command, result_files.from_markdown(scenarios),
                              notes=f"{results['tracebacks_in_log']} tracebacks in the server log over the whole run")
    result_files.write_result("serving_faults_bad_inputs", command, result_files.from_markdown(bad_inputs))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "serving_faults.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    with contextlib.suppress(OSError):
        shutil.rmtree(scratch)
    valid_failures = sum(results[k]["failed"] for k in ("hot_swap", "corrupt_version", "rollback", "load"))
    valid_failures += results["sigterm"]["failed_before"] + results["sigterm"]["in_flight_failed"]
    bad = sum(r["got"] != r["expected"] or not r["names_it"] for r in results["bad_inputs"])
    return 0 if valid_failures == 0 and bad == 0 and results["sigterm"]["exit_code"] == 0 else 1


def report(r: dict) -> None:
    swap, corrupt, back, load, term = (r[k] for k in ("hot_swap", "corrupt_version", "rollback", "load", "sigterm"))
    bad = r["bad_inputs"]
    right = sum(row["got"] == row["expected"] and row["names_it"] for row in bad)
    print(f"\n| scenario (N = {r['n']}) | valid requests | failed | figures |")
    print("|---|---|---|---|")
    print(f"| REST API | 4 | {sum(v != 200 for v in r['rest'].values())} | "
          + ", ".join(f"{k} {v}" for k, v in r["rest"].items()) + " |")
    print(f"| bad-input classes | | | {right}/{len(bad)} answered with TF Serving's code and a message naming the "
          f"input; {r['tracebacks_after_bad_inputs']} tracebacks in the server log |")
    print(f"| hot swap (push version 2, 2 streaming clients) | {swap['requests']} | {swap['failed']} | version 2 "
          f"answering {swap['seconds_to_new_version']:.1f} s after the push; p50 {swap['p50_ms']:.0f} ms, "
          f"p99 {swap['p99_ms']:.0f} ms |")
    print(f"| corrupt version 3 (saved_model.pb without variables/, 1 client) | {corrupt['requests']} | "
          f"{corrupt['failed']} | {corrupt['failed_loads']} failed loads (1 + 5 retries, back-off 1-16 s), then "
          f"{corrupt['state']}; {corrupt['failed_loads_during_idle']} loads and {corrupt['idle_cores']:.3f} cores "
          f"over the next idle window; served {corrupt['served_versions']} |")
    print(f"| rollback (remove 3, then the newest good version 2; 2 clients) | {back['requests']} | "
          f"{back['failed']} | version 1 answering {back['seconds_to_previous_version']:.1f} s after 2 was "
          f"removed; served {back['versions']} |")
    print(f"| load ({load['clients']} clients x {load['requests'] // load['clients']} requests) | "
          f"{load['requests']} | {load['failed']} | p50 {load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms, "
          f"{load['requests_per_s']:.1f} requests/s; one client back to back: p50 {load['one_client_p50_ms']:.0f} "
          f"ms, p99 {load['one_client_p99_ms']:.0f} ms |")
    print(f"| SIGTERM (3 streaming clients) | {term['answered_before'] + term['in_flight']} | "
          f"{term['failed_before'] + term['in_flight_failed']} | "
          f"{term['in_flight'] - term['in_flight_failed']} of {term['in_flight']} in flight at SIGTERM completed; "
          f"{term['refused_after']} sent after it refused ({', '.join(term['refused_codes']) or '-'}); "
          f"drained in {term['drain_seconds'] or float('nan'):.1f} s, exit {term['exit_code']} after "
          f"{term['exit_seconds']:.1f} s |")
    print(f"\n{r['tracebacks_in_log']} tracebacks in the server log over the whole run.")
    print("\n| bad-input class | expected | got | message names the input | ms |")
    print("|---|---|---|---|---|")
    for row in bad:
        print(f"| {row['class']} | {row['expected']} | {row['got']} | {'yes' if row['names_it'] else 'NO'} | "
              f"{row['ms']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
