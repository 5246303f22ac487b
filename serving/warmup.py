"""TF Serving warm-up records (`assets.extra/tf_serving_warmup_requests`) for the cascade model.

TF Serving replays these PredictionLogs when it loads a version, before it reports the version
AVAILABLE, so the first real requests do not pay for graph initialisation and (on GPU) kernel
autotuning. The requests carry missing values only: warm-up exercises shapes, not scores, and
needs no data at export time.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from hap.data import contract as c
from hap.serving import request as rq

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_SIZES = (1, 100, 1000)


def warmup_logs(features: c.FeatureSet, model_name: str, sizes=WARMUP_SIZES) -> list:
    layout = rq.RequestLayout(features)
    logs = []
    for n in sizes:
        request = layout.missing(n)
        for signature, inputs in (("cascade", request),
                                  ("score_examples", {"examples": np.array(layout.to_examples(request), object)})):
            logs.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=rq.predict_request(model_name, signature, inputs))))
    return logs


def write_warmup(export_dir: str, features: c.FeatureSet, model_name: str, sizes=WARMUP_SIZES) -> str:
    directory = os.path.join(export_dir, "assets.extra")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_logs(features, model_name, sizes):
            writer.write(log.SerializeToString())
    return path
