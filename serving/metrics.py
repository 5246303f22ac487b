"""TF Serving's Prometheus metrics for `hap serve`, under TF Serving's names and labels, so the
dashboards and alerts written for TF Serving work against `hap serve` unchanged:

- `:tensorflow:serving:request_count{model_name, status}`: Predict, Classify and Regress requests
  by status code name (OK, INVALID_ARGUMENT, NOT_FOUND, ...), gRPC and REST together, a REST body
  refused before it becomes a request proto (malformed JSON) included. As in TF Serving over
  gRPC, the model name is the one the request names (an unknown one too), and GetModelStatus,
  GetModelMetadata and MultiInference are not counted;
- `:tensorflow:serving:request_latency{model_name, API, entrypoint}`: histogram of the wall time
  of the requests answered OK, in microseconds; API Predict, Classify or Regress, entrypoint GRPC
  or REST;
- `:tensorflow:serving:model_warmup_latency{model_path, status}`: histogram of the time taken
  to replay a version's warm-up requests, in microseconds, for the versions that have them.

One difference: TF Serving exports request_count as a counter without the `_total` suffix that
prometheus_client's text format gives every counter, so it is exported here as an untyped
metric, which keeps the name (Prometheus's rate() and increase() work on it as on a counter).

Each ModelServer has its own registry, so servers in one process (tests) do not add up.

Whether the page is served, and where, follows TF Serving's `--monitoring_config_file`
(`load_monitoring_config`): a MonitoringConfig text proto whose `prometheus_config { enable:
true path: "..." }` turns it on (path empty: PATH). Without one, as in TF Serving, there is no
metrics page; the metrics are kept all the same.
"""
from __future__ import annotations

import collections
import threading

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import UnknownMetricFamily

PATH = "/monitoring/prometheus/metrics"  # TF Serving's default path (monitoring.config sets it too)
PREDICT, CLASSIFY, REGRESS = "Predict", "Classify", "Regress"  # the APIs TF Serving counts
# TF Serving's samplers: Buckets::Exponential(10, 1.8, 33) microseconds, about 20 minutes at the
# top; the bounds rounded to 6 digits, as TF Serving prints them.
LATENCY_BUCKETS_US = tuple(float(f"{10 * 1.8 ** i:.6g}") for i in range(33))


class ServingMetrics:
    """One ModelServer's metrics, and the registry its metrics page is generated from."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._request_counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self.registry.register(self)
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"], buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.warmup_latency = Histogram(
            ":tensorflow:serving:model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ["model_path", "status"], buckets=LATENCY_BUCKETS_US, registry=self.registry)

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """One answered request; its latency only if it succeeded, as TF Serving records it."""
        with self._lock:
            self._request_counts[model_name, status] += 1
        if status == "OK":
            self.request_latency.labels(model_name, api, entrypoint).observe(seconds * 1e6)

    def record_warmup(self, model_path: str, seconds: float) -> None:
        self.warmup_latency.labels(model_path, "OK").observe(seconds * 1e6)

    def collect(self):
        """The request counts, for the registry (the histograms collect themselves)."""
        family = UnknownMetricFamily(":tensorflow:serving:request_count", "The total number of requests.",
                                     labels=["model_name", "status"])
        with self._lock:
            counts = sorted(self._request_counts.items())
        for (model_name, status), count in counts:
            family.add_metric([model_name, status], count)
        yield family


def _monitoring_config_class():
    """TF Serving's MonitoringConfig message (tensorflow_serving/config/monitoring_config.proto),
    which the tensorflow-serving-api package does not ship, built from its two-message definition
    so that its text format is parsed exactly as TF Serving parses it."""
    proto = descriptor_pb2.FileDescriptorProto(name="hap/monitoring_config.proto", package="tensorflow.serving",
                                               syntax="proto3")
    field = descriptor_pb2.FieldDescriptorProto
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


MonitoringConfig = _monitoring_config_class()


def load_monitoring_config(path: str) -> str | None:
    """The path of the metrics page a TF Serving monitoring config file turns on, or None when it
    leaves it off (prometheus_config.enable false or absent). Errors name the file."""
    config = MonitoringConfig()
    with open(path, encoding="utf-8") as f:
        try:
            text_format.Parse(f.read(), config)
        except text_format.ParseError as e:
            raise ValueError(f"{path}: not a TF Serving monitoring config (MonitoringConfig text): {e}") from None
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    if prometheus.path and not prometheus.path.startswith("/"):
        raise ValueError(f"{path}: prometheus_config.path must start with '/', got {prometheus.path!r}")
    return prometheus.path or PATH
