"""DriftGate: fails the run, naming every drifted feature, when TFX's DistributionValidator found
that today's data (the eval split: the newest day) moved too far from the last accepted day's.

DistributionValidator (tfx.components.distribution_validator, TFX 1.16) compares two
statistics artifacts with TFDV's drift comparators (L-infinity distance for categorical
features, Jensen-Shannon divergence for numeric ones) and, like ExampleValidator, records
anomalies without stopping the run. This gate stops it, as AnomalyGate does for the schema's
anomalies. When it passes, it hands today's statistics on as `accepted_statistics`: the next
run's baseline (pipeline.py resolves the latest of them). A drifted day is never accepted, so a
re-run of it is checked against the same baseline again, and so is the next day until a day
passes or a run accepts the drift (`accept_drift`); with no accepted statistics yet (the first
run) DistributionValidator compares nothing.
"""

import os

from tensorflow_data_validation.utils import anomalies_util
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies, ExampleStatistics
from tfx.utils import io_utils

ANOMALIES_FILE = "SchemaDiff.pb"


class DataDriftError(RuntimeError):
    """Today's data drifted; the message lists feature and distance per line."""


def _pair_anomalies(uri: str, split_names: str) -> list:
    """The Anomalies protos of a DistributionValidator output: its splits are pairs, e.g.
    `eval_eval`, each in `SplitPair-<pair>/` (none when it had no baseline to compare with)."""
    return [anomalies_util.load_anomalies_binary(os.path.join(uri, f"SplitPair-{pair}", ANOMALIES_FILE))
            for pair in artifact_utils.decode_split_names(split_names)]


def drift_measurements(uri: str, split_names: str) -> list[dict]:
    """Every comparison DistributionValidator made, drifted or not:
    {"feature", "measure" (L_INFTY, JENSEN_SHANNON_DIVERGENCE), "value", "threshold"}."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    kinds = anomalies_pb2.DriftSkewInfo.Measurement.Type
    return [{"feature": ".".join(info.path.step), "measure": kinds.Name(m.type), "value": m.value,
             "threshold": m.threshold}
            for found in _pair_anomalies(uri, split_names) for info in found.drift_skew_info
            for m in info.drift_measurements]


def drift_messages(anomalies: ExampleAnomalies) -> list[str]:
    """One line per drifted feature in a DistributionValidator output."""
    messages = []
    for found in _pair_anomalies(anomalies.uri, anomalies.split_names):
        for feature, info in sorted(found.anomaly_info.items()):
            detail = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason)
            messages.append(f"feature {feature!r}: {detail}")
        for reason in found.dataset_anomaly_info.reason:
            messages.append(f"whole dataset: {reason.short_description}: {reason.description}")
    return messages


@component
def DriftGate(anomalies: InputArtifact[ExampleAnomalies], statistics: InputArtifact[ExampleStatistics],
              accepted_statistics: OutputArtifact[ExampleStatistics],
              baseline_statistics: InputArtifact[ExampleStatistics] = None, accept_drift: Parameter[bool] = False) -> None:
    """`accept_drift`: a drift found is a real change, not a fault: let the run go on and make
    today the baseline of the next day."""
    messages = drift_messages(anomalies)
    if messages and not accept_drift:
        against = (f"the last accepted day's, day {baseline_statistics.span}" if baseline_statistics is not None
                   else "the last accepted day's")
        raise DataDriftError(
            f"DistributionValidator found drift: today's data (day {statistics.span}) moved too far from {against}; "
            "stopping before Transform and training:\n  " + "\n  ".join(messages)
            + "\n(the thresholds: the settings' drift.comparators, `hap config show`; if the change is real, "
              "`hap run --set drift.accept=true` accepts it and makes today the baseline)")
    io_utils.copy_dir(statistics.uri, accepted_statistics.uri)
    accepted_statistics.split_names = statistics.split_names
    accepted_statistics.span = statistics.span
