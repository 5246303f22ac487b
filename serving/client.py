"""A TF Serving gRPC client for the cascade model, built on tensorflow-serving-api's stubs only,
so it works the same against TF Serving and against `hap serve`.

The request layout (which inputs are per request, which per candidate, their dtypes) is read
from the model's own signature with GetModelMetadata (`RequestLayout.from_signature_def`), so
the client needs no copy of the feature set.
"""
from __future__ import annotations

import dataclasses
import itertools
import os

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, prediction_service_pb2_grpc

from hap.data import contract as c
from hap.data import reader
from hap.serving import request as rq

DEFAULT_TARGET = "127.0.0.1:8500"


def connect(target: str = DEFAULT_TARGET, max_message_bytes: int = 64 * 1024 * 1024):
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", max_message_bytes),
                                                     ("grpc.max_send_message_length", max_message_bytes)])
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def signature_def(stub, model_name: str, signature: str = "cascade", timeout: float = 30.0):
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name=model_name), metadata_field=["signature_def"])
    response = stub.GetModelMetadata(request, timeout=timeout)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    if signature not in signature_map.signature_def:
        raise ValueError(f"model {model_name!r} has no signature {signature!r}")
    return signature_map.signature_def[signature]


def predict(stub, model_name: str, signature: str, inputs: dict, timeout: float = 30.0) -> dict:
    response = stub.Predict(rq.predict_request(model_name, signature, inputs), timeout=timeout)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def request_rows(data_dir: str, request_id: str | None = None) -> tuple[str, list[dict]]:
    """The rows of one request of a dataset: `request_id`, or the first request of funnel/ (a
    whole retrieval result, what pre-ranking sees in production) or else of samples/."""
    features = c.load_features(data_dir)
    parts = [c.FUNNEL_DIR, c.SAMPLES_DIR] if request_id is None else [c.SAMPLES_DIR, c.FUNNEL_DIR]
    for part in parts:
        if not os.path.isdir(os.path.join(data_dir, part)):
            continue
        rows = reader.read_rows(data_dir, part, features)
        if request_id is None:
            first = next(rows, None)
            if first is None:
                continue
            request_id = first["request_id"]
            rows = itertools.chain([first], rows)
        matching = [r for r in rows if r["request_id"] == request_id]
        if matching:
            return request_id, matching
    raise ValueError(f"{data_dir}: no request {request_id!r} in samples/ or funnel/")


@dataclasses.dataclass
class Ranked:
    index: int
    item_id: str
    score: float
    light_score: float
    heavy_score: float
    routed: bool


def ranking(outputs: dict, item_ids) -> list[Ranked]:
    return [Ranked(int(i), str(item_ids[i]), float(outputs["scores"][i]), float(outputs["light_scores"][i]),
                   float(outputs["heavy_scores"][i]), bool(outputs["routed"][i]))
            for i in outputs["top_indices"]]


def format_ranking(ranked: list[Ranked], n: int) -> str:
    routed = sum(r.routed for r in ranked)
    lines = [f"{n} candidates; top {len(ranked)} shown ({routed} of them re-scored by the heavy model)",
             f"{'rank':>4}  {'index':>5}  {'item_id':<14} {'final':>8} {'light':>8} {'heavy':>8}  routed"]
    for rank, r in enumerate(ranked, 1):
        heavy = f"{r.heavy_score:8.4f}" if r.routed else f"{'-':>8}"
        lines.append(f"{rank:>4}  {r.index:>5}  {r.item_id:<14} {r.score:8.4f} {r.light_score:8.4f} {heavy}  "
                     f"{'yes' if r.routed else ''}")
    return "\n".join(lines)


