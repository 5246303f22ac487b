"""TF Serving warm-up records (`assets.extra/tf_serving_warmup_requests`) for the cascade model.

TF Serving replays these PredictionLogs when it loads a version, before it reports the version
AVAILABLE, so the first real requests do not pay for graph initialisation and (on GPU) kernel
autotuning. The requests carry missing values only: warm-up exercises shapes, not scores, and
needs no data at export time.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from hap import storage
from hap.data import contract as c
from hap.serving import cascade
from hap.serving import request as rq

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_SIZES = (1, 100, 1000)


def warmup_logs(features: c.FeatureSet, model_name: str, sizes=WARMUP_SIZES) -> list:
    """Every signature at every size: TF Serving warms signatures one by one, so one left out
    (serving_default, an alias of cascade, included) pays its first call's set-up."""
    layout = rq.RequestLayout(features)
    items = {f.name for f in features.features if f.role == c.ITEM}
    logs = []
    for n in sizes:
        request = layout.missing(n)
        examples = {"examples": np.array(layout.to_examples(request), object)}
        inputs_of = {**dict.fromkeys(cascade.REQUEST_SIGNATURES, request),
                     **dict.fromkeys(cascade.ITEM_SIGNATURES, {k: v for k, v in request.items() if k in items}),
                     **dict.fromkeys(cascade.EXAMPLE_SIGNATURES, examples)}
        for signature, inputs in inputs_of.items():
            logs.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=rq.predict_request(model_name, signature, inputs))))
    return logs


def write_warmup(export_dir: str, features: c.FeatureSet, model_name: str, sizes=WARMUP_SIZES) -> str:
    directory = storage.join(export_dir, "assets.extra")
    storage.makedirs(directory)
    path = storage.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_logs(features, model_name, sizes):
            writer.write(log.SerializeToString())
    return path
