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
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from hap.data import contract as c
from hap.serving import request as rq

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_SIZES = (1, 100, 1000)


def empty_request(features: c.FeatureSet, n: int) -> dict:
    """A request of n candidates whose every value is missing, sequences at full length."""
    out = {}
    for f in features.features:
        rows = 1 if rq.is_request_level(f) else n
        if f.kind == c.NUMERIC:
            out[f.name] = np.full(rows, np.nan, np.float32)
        elif f.kind == c.CATEGORICAL:
            out[f.name] = np.full(rows, rq.MISSING_TOKEN, object)
        else:
            out[f.name] = np.full((rows, f.max_len), rq.MISSING_TOKEN, object)
    return out


def examples_from_request(request: dict, features: c.FeatureSet) -> list[bytes]:
    """One serialized raw tf.Example per candidate, the request's user row beside each."""
    n = rq.num_candidates(request, features)
    serialized = []
    for i in range(n):
        feature = {}
        for f in features.features:
            value = request[f.name][0 if rq.is_request_level(f) else i]
            if f.kind == c.NUMERIC:
                if not np.isnan(value):
                    feature[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
                continue
            tokens = [t for t in (value if f.kind == c.SEQUENCE else [value]) if t != rq.MISSING_TOKEN]
            if tokens or f.kind == c.SEQUENCE:
                feature[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode() for t in tokens]))
        serialized.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return serialized


def predict_request(model_name: str, signature: str, inputs: dict) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for name, value in inputs.items():
        value = np.asarray(value)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string if value.dtype == object else None))
    return request


def warmup_logs(features: c.FeatureSet, model_name: str, sizes=WARMUP_SIZES) -> list:
    logs = []
    for n in sizes:
        request = empty_request(features, n)
        for signature, inputs in (("cascade", request),
                                  ("score_examples", {"examples": np.array(examples_from_request(request, features),
                                                                           object)})):
            logs.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=predict_request(model_name, signature, inputs))))
    return logs


def write_warmup(export_dir: str, features: c.FeatureSet, model_name: str, sizes=WARMUP_SIZES) -> str:
    directory = os.path.join(export_dir, "assets.extra")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_logs(features, model_name, sizes):
            writer.write(log.SerializeToString())
    return path
