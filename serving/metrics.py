"""TF Serving's Prometheus metrics for `hap serve`, under TF Serving's names and labels, so the
dashboards and alerts written for TF Serving work against `hap serve` unchanged:

- `:tensorflow:serving:request_count{model_name, status}`: Predict requests by status code name
  (OK, INVALID_ARGUMENT, NOT_FOUND, ...), gRPC and REST together, a REST body refused before it
  becomes a PredictRequest (malformed JSON) included. As in TF Serving, the model name is the one
  the request names (an unknown one too), and GetModelStatus and GetModelMetadata are not counted;
- `:tensorflow:serving:request_latency{model_name, API, entrypoint}`: histogram of the wall time
  of the Predict requests answered OK, in microseconds; entrypoint GRPC or REST;
- `:tensorflow:serving:model_warmup_latency{model_path, status}`: histogram of the time taken
  to replay a version's warm-up requests, in microseconds, for the versions that have them.

One difference: TF Serving exports request_count as a counter without the `_total` suffix that
prometheus_client's text format gives every counter, so it is exported here as an untyped
metric, which keeps the name (Prometheus's rate() and increase() work on it as on a counter).

Each ModelServer has its own registry, so servers in one process (tests) do not add up.
"""
from __future__ import annotations

import collections
import threading

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import UnknownMetricFamily

PATH = "/monitoring/prometheus/metrics"  # TF Serving's default path (monitoring.config sets it too)
PREDICT = "Predict"
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
