"""AnomalyGate: fails the run, naming every anomalous feature, when ExampleValidator found any.

TFX's ExampleValidator records anomalies (and a per-split `blessed` property) but does not stop
the run; downstream components would train on bad data. Transform is made to depend on this
gate, so anomalous data never reaches the Trainers.
"""

import os

from tensorflow_data_validation.utils import anomalies_util
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
    """The data does not match its schema; the message lists feature and problem per line."""


def anomaly_messages(anomalies: ExampleAnomalies) -> "list[str]":
    messages = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies], split), ANOMALIES_FILE)
        found = anomalies_util.load_anomalies_binary(path)
        for feature, info in sorted(found.anomaly_info.items()):
            detail = "; ".join(r.description for r in info.reason) or info.description
            messages.append(f"split {split!r}, feature {feature!r}: {info.short_description}: {detail}")
        if found.HasField("dataset_anomaly_info"):
            info = found.dataset_anomaly_info
            messages.append(f"split {split!r}, whole dataset: {info.short_description}: {info.description}")
    return messages


@component
def AnomalyGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:
    messages = anomaly_messages(anomalies)
    if messages:
        raise DataAnomaliesError(
            "ExampleValidator found anomalies; stopping before Transform and training:\n  "
            + "\n  ".join(messages))
