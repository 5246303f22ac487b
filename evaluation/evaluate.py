"""`hap evaluate`: a pushed cascade SavedModel, request by request, on a dataset's eval day.

The model is called the way TF Serving calls it: one request per call of its `cascade`, `light`
and `heavy` signatures, with raw feature values (`hap.serving.request.RequestLayout`), so what is
measured is what is served, Transform included. Three scorers come out of every request:

- `cascade`: the signature's `scores`, the ranking key its routing policy makes of the light and
  heavy scores (serving/routing.py);
- `light`, `heavy`: one model alone on all N candidates.

Quality (`hap.evaluation.auc_metrics` and `top_k_metrics`, one tie rule for all):

- on the logged samples of the eval day (the last `day` of samples/): AUC of exposed positives
  against each negative source and their mean, GAUC over exposed samples, and HitRate@K and
  Recall@K of clicked items among each request's logged candidates. K defaults to 1, 3, 5:
  a logged request has about 30 candidates (about 10 exposed) and one or two clicks, so at
  K >= 10 every scorer finds nearly every click and the metric stops telling them apart.
- on funnel/ when the dataset has it (held-out requests with ~1000 retrieved candidates each and
  their `oracle_utility`): Recall@K of the oracle top 10 and NDCG@K by utility at K = 100 and
  200, which is what pre-ranking is for (cut ~1000 to 100-200 without losing what the user
  wants). Without funnel/ these are skipped and the report says so.

`cascade_quality` is the one number a cascade is blessed by (components/cascade_assembler).

Compute, per request: FLOPs from the per-part counts stored with the model
(`assets.extra/hap_cascade.json`, serving/flops.py) and measured latency of each signature call
(in-process, wall clock, the call and the copy of its outputs to numpy; each signature is called
once on the first request before timing, which is left out).

Outputs, written to a temporary folder and moved into place: `metrics.json`, `per_request.csv`,
`report.md` and its PNG plots (evaluation/report.py).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import heapq
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from hap import storage
from hap.data import contract as c
from hap.data import reader
from hap.data import writer
from hap.evaluation import auc_metrics, report, top_k_metrics
from hap.evaluation.metric_base import MetricResult
from hap.evaluation.popularity import ItemPopularity
from hap.evaluation.top_k_metrics import FUNNEL_KS, FUNNEL_TOP
from hap.evaluation.defaults import DEFAULT_KS
from hap.serving import cascade, flops, model_versions
from hap.serving import request as rq

SIGNATURES = ("cascade", "light", "heavy")
# Which per-request FLOPs entry (serving/flops.py request_flops) each signature's call costs.
FLOPS_OF_SIGNATURE = {"cascade": "cascade", "light": "light_only", "heavy": "heavy_all"}
LOGGED, FUNNEL = "logged", "funnel"


# ---------------------------------------------------------------------------------------------
# Inputs: the model and the dataset


def resolve_model(path: str) -> str:
    """The version folder of a pushed model: `path` itself when it holds a SavedModel, else its
    newest complete version (the largest numeric subfolder with a saved_model.pb, which Pusher
    copies last)."""
    if storage.isfile(storage.join(path, "saved_model.pb")):
        return path
    if not storage.isdir(path):
        raise FileNotFoundError(f"{path}: no such model folder (expected OUT/serving/hap or one of its versions)")
    return model_versions.newest_complete_version(path)


def progress_stream(progress):
    """Where a progress bar goes: `progress` itself when it is a stream (the command line's
    terminal while library output goes to the log), else standard error; False: no bar."""
    return progress if hasattr(progress, "write") else None


@dataclasses.dataclass(frozen=True)
class CascadeInfo:
    """What the assembler stored beside the model (serving/cascade.py INFO_FILE)."""

    settings: dict
    features: c.FeatureSet
    flops: dict
    budget: dict | None = None  # the routing's choice within a serving budget (serving/budget.py)


def load_info(version_dir: str) -> CascadeInfo:
    path = storage.join(version_dir, "assets.extra", cascade.INFO_FILE)
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path}: missing; is {version_dir} a cascade pushed by the HAP pipeline?")
    with storage.open(path) as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
    for key in ("settings", "features", "flops"):
        if key not in info:
            raise ValueError(f"{path}: no {key!r} entry")
    for key in ("light_user", "light_per_candidate", "heavy_per_candidate"):
        if key not in info["flops"]:
            raise ValueError(f"{path}: flops has no {key!r}")
    if "routing" not in info["settings"]:
        raise ValueError(f"{path}: settings has no 'routing' (a cascade assembled before routing policies)")
    features = c.parse_features({"version": 1, "features": info["features"]}, f"{path}: features")
    return CascadeInfo(info["settings"], features, info["flops"], info.get("budget"))


def check_features(model_features: c.FeatureSet, data_features: c.FeatureSet, data_dir: str) -> None:
    """Every feature the model reads must be in the dataset, with the same kind."""
    problems = []
    where = os.path.join(data_dir, c.FEATURES_FILE)
    for f in model_features.features:
        if f.name not in data_features.names:
            problems.append(f"{where}: no feature {f.name!r}, which the model reads ({f.role}, {f.kind})")
        elif data_features[f.name].kind != f.kind:
            problems.append(f"{where}: feature {f.name!r} is {data_features[f.name].kind}, the model reads it "
                            f"as {f.kind}")
    if problems:
        raise c.ContractError(problems)


def _id_hash(request_id: str) -> int:
    # Stable across processes and machines, unlike hash().
    return int.from_bytes(hashlib.blake2b(request_id.encode("utf-8"), digest_size=8).digest(), "big")


class RequestSample:
    """Rows grouped by request: of the latest day only (`latest_day`), of one `half` of the
    requests (0 or 1, by their ids' hash; None: all), and at most `size` requests, those whose
    ids hash lowest (bottom-k).

    The sample is fixed by the request ids alone, whatever the order of files and rows, so two
    cascades scored on one dataset are scored on the same requests. Rows are kept as stored and
    parsed once the sample is final, so a row outside it costs a read, not a parse (rows of
    requests let in early and pushed out later are never parsed either), and memory is bounded
    by the sample. Requests keep the order of their first row."""

    def __init__(self, size: int | None = None, latest_day: bool = False, half: int | None = None):
        if size is not None and size < 1:
            raise ValueError(f"a request sample needs a size >= 1, got {size}")
        if half not in (None, 0, 1):
            raise ValueError(f"half must be 0, 1 or None, got {half!r}")
        self.size, self.latest_day, self.half = size, latest_day, half
        self.day = None
        self._rows: dict[str, list[reader.RawRow]] = {}
        self._largest = []  # max-heap of the sample's (-hash, request_id)

    def _keeps(self, request_id: str, day: int) -> bool:
        if self.latest_day:
            if self.day is None or day > self.day:
                self.day, self._rows, self._largest = day, {}, []
            elif day < self.day:
                return False
        if request_id in self._rows:
            return True
        if self.half is not None and _id_hash(request_id) >> 63 != self.half:
            return False  # the top bit: independent of the bottom-k below, which the low hashes decide
        if self.size is not None:
            entry = (-_id_hash(request_id), request_id)
            if len(self._largest) < self.size:
                heapq.heappush(self._largest, entry)
            elif entry > self._largest[0]:
                del self._rows[heapq.heappushpop(self._largest, entry)[1]]
            else:
                return False
        self._rows[request_id] = []
        return True

    def read(self, data_dir: str, part: str, features: c.FeatureSet) -> dict[str, list[dict]]:
        kinds = features.column_kinds(funnel=part == c.FUNNEL_DIR)
        for request_id, day, raw in reader.keyed_rows(data_dir, part, kinds):
            if self._keeps(request_id, day):
                self._rows[request_id].append(raw)
        # Each request's stored rows are let go as it is parsed: the day is never held twice.
        return {request_id: [reader.typed_row(raw, kinds) for raw in self._rows.pop(request_id)]
                for request_id in list(self._rows)}


def eval_day_requests(data_dir: str, features: c.FeatureSet, max_requests: int | None = None,
                      half: int | None = None) -> tuple[int, dict[str, list[dict]]]:
    """The last day of samples/ and its rows grouped by request, in file order (one pass; only the
    latest day seen so far is kept in memory, and rows of earlier days are not parsed in full);
    with `max_requests`, a sample of that many of its requests, with `half` of one half of them
    (`RequestSample`)."""
    sample = RequestSample(max_requests, latest_day=True, half=half)
    requests = sample.read(data_dir, c.SAMPLES_DIR, features)
    if sample.day is None:
        raise c.ContractError([f"{os.path.join(data_dir, c.SAMPLES_DIR)}: no samples"])
    return sample.day, requests


def funnel_requests(data_dir: str, features: c.FeatureSet, max_requests: int | None = None,
                    half: int | None = None) -> dict[str, list[dict]] | None:
    """funnel/ rows grouped by request (with `max_requests` and `half`, a sample of them:
    `RequestSample`), or None when the dataset has no funnel/."""
    if not storage.isdir(storage.join(data_dir, c.FUNNEL_DIR)):
        return None
    requests = RequestSample(max_requests, half=half).read(data_dir, c.FUNNEL_DIR, features)
    for request_id, rows in requests.items():
        for row in rows:
            if row.get(c.ORACLE_COLUMN) is None:
                raise c.ContractError([f"{os.path.join(data_dir, c.FUNNEL_DIR)}: request {request_id}, "
                                       f"item {row['item_id']}: no {c.ORACLE_COLUMN!r} (every funnel row needs one)"])
    return requests


# What a cascade is blessed by: pre-ranking's job is the set it passes on, so Recall@200 of the
# oracle top 10 on funnel/ when the dataset has one; else GAUC of the logged requests' exposed
# samples (the order within each request, which routing changes).
BLESSING_METRICS = {FUNNEL: f"oracle_recall@{FUNNEL_KS[-1]}", LOGGED: "gauc"}


def blessing_requests(data_dir: str, features: c.FeatureSet, max_requests: int | None = None,
                      half: int | None = None) -> tuple[str, dict[str, list[dict]]]:
    """The part a cascade is blessed on (funnel/ if present, else the eval day's logged requests)
    and its requests (`RequestSample` of `max_requests` and `half`)."""
    funnel = funnel_requests(data_dir, features, max_requests, half)
    return ((FUNNEL, funnel) if funnel is not None
            else (LOGGED, eval_day_requests(data_dir, features, max_requests, half)[1]))


def part_metric(part: str, request, label=None, group=None, utility=None):
    """The blessing metric of `part` (BLESSING_METRICS) as a function of the candidates' scores."""
    name = BLESSING_METRICS[part]

    def metric(score) -> float:
        if part == FUNNEL:
            return funnel_metrics(request, np.asarray(utility, np.float64), score)[name].value
        return logged_metrics(request, np.asarray(label), np.asarray(group), score)[name].value

    return metric


def cascade_quality(version_dir: str, data_dir: str, max_requests: int | None = None,
                    popularity: ItemPopularity | None = None, half: int | None = None) -> dict:
    """The cascade signature's blessing metric on `data_dir` (funnel/ if present, else the eval
    day's logged requests), one request per call as served; with `max_requests` and `half`, on a
    sample of the requests fixed by their ids (`RequestSample`): {"part", "metric", "value",
    "requests"}, and with `popularity` its scores' metric on the same candidates as "popularity"."""
    info = load_info(version_dir)
    features = c.load_features(data_dir)
    check_features(info.features, features, data_dir)
    part, requests = blessing_requests(data_dir, features, max_requests, half)
    scored = score_part(SignatureCaller(version_dir), requests, info, part, progress=False, signatures=("cascade",))
    request, scores = scored.arrays()
    metric = part_metric(part, request, scored.label, scored.group, scored.utility)
    out = {"part": part, "metric": BLESSING_METRICS[part], "value": metric(scores["cascade"]),
           "requests": len(requests)}
    if popularity is not None:
        out["popularity"] = metric(popularity.scores(scored.item))
    return out


# ---------------------------------------------------------------------------------------------
# Metrics, shared with the benchmark so both report the same definitions


def logged_metrics(request, label, group, score, ks=DEFAULT_KS) -> dict[str, MetricResult]:
    """Per-source AUCs, GAUC over exposed samples, HitRate@K and Recall@K of clicks."""
    out = dict(auc_metrics.auc_by_source(label, score, group))
    out["gauc"] = auc_metrics.gauc(request, label, score, group)
    for k in ks:
        out[f"hitrate@{k}"] = top_k_metrics.hitrate_at_k(request, label, score, k)
        out[f"recall@{k}"] = top_k_metrics.recall_at_k(request, label, score, k)
    return out


def funnel_metrics(request, utility, score) -> dict[str, MetricResult]:
    out = {}
    for k in FUNNEL_KS:
        out[f"oracle_recall@{k}"] = top_k_metrics.oracle_recall_at_k(request, utility, score, k, FUNNEL_TOP)
        out[f"ndcg@{k}"] = top_k_metrics.ndcg_at_k(request, utility, score, k)
    return out


def groups_of(rows: list[dict]) -> list[str]:
    return [c.sample_group(r["source"], r["click"]) for r in rows]


def latency_summary(ms) -> dict:
    ms = np.asarray(ms, np.float64)
    if not ms.size:
        return {}
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "requests": int(ms.size)}


def jsonable(x):
    """NaN becomes null (JSON has no NaN); MetricResults become dicts."""
    if isinstance(x, MetricResult):
        return jsonable(x.to_dict())
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---------------------------------------------------------------------------------------------
# Scoring the SavedModel


class SignatureCaller:
    """Calls the loaded model's signatures on request tensors, timing each call."""

    def __init__(self, version_dir: str):
        self.model = tf.saved_model.load(version_dir)
        missing = [s for s in SIGNATURES if s not in self.model.signatures]
        if missing:
            raise ValueError(f"{version_dir}: no signature {', '.join(missing)} (has {sorted(self.model.signatures)})")

    def __call__(self, signature: str, tensors: dict) -> tuple[dict, float]:
        start = time.perf_counter()
        outputs = {k: v.numpy() for k, v in self.model.signatures[signature](**tensors).items()}
        return outputs, time.perf_counter() - start


@dataclasses.dataclass
class Scored:
    """One part (logged or funnel) scored request by request: per-candidate lists (label and
    group for logged samples, utility for the funnel) and one record per request."""

    signatures: tuple = SIGNATURES
    request: list = dataclasses.field(default_factory=list)
    scores: dict = dataclasses.field(init=False)
    label: list = dataclasses.field(default_factory=list)
    group: list = dataclasses.field(default_factory=list)
    utility: list = dataclasses.field(default_factory=list)
    item: list = dataclasses.field(default_factory=list)
    per_request: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.scores = {s: [] for s in self.signatures}

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return np.asarray(self.request), {s: np.concatenate(v) for s, v in self.scores.items()}


def score_part(caller: SignatureCaller, requests: dict[str, list[dict]], info: CascadeInfo, part: str,
               progress: bool, signatures: tuple = SIGNATURES) -> Scored:
    """Calls `signatures` (the cascade's first) on every request of `part`."""
    scored = Scored(signatures)
    layout = rq.RequestLayout(info.features)
    first = True
    for request_id, rows in tqdm(requests.items(), desc=f"scoring {part} requests", unit="req",
                                 disable=not progress, mininterval=0.5, file=progress_stream(progress)):
        n = len(rows)
        if n > int(info.settings.get("max_candidates", n)):
            raise ValueError(f"{part} request {request_id}: {n} candidates, more than the model's "
                             f"max_candidates={info.settings['max_candidates']}")
        tensors = layout.to_tensors(layout.from_rows(rows))
        if first:
            for signature in signatures:
                caller(signature, tensors)
            first = False
        record = {"part": part, "request_id": request_id, "n": n}
        for signature in signatures:
            outputs, seconds = caller(signature, tensors)
            scored.scores[signature].append(outputs["scores"].astype(np.float64))
            record[f"latency_ms_{signature}"] = 1000.0 * seconds
            if "routed" in outputs:
                record["k"] = int(outputs["routed"].sum())
        costs = flops.request_flops(info.flops, n, record["k"])
        for signature in signatures:
            record[f"flops_{signature}"] = costs[FLOPS_OF_SIGNATURE[signature]]
        scored.request.extend([request_id] * n)
        scored.item.extend(r["item_id"] for r in rows)
        scored.per_request.append(record)
        if part == LOGGED:
            scored.label.extend(r["click"] for r in rows)
            scored.group.extend(groups_of(rows))
        else:
            scored.utility.extend(r[c.ORACLE_COLUMN] for r in rows)
    return scored


def compute_summary(per_request: list[dict]) -> dict:
    if not per_request:
        return {}
    out = {"requests": len(per_request),
           "candidates_mean": float(np.mean([r["n"] for r in per_request])),
           "routed_mean": float(np.mean([r["k"] for r in per_request]))}
    for signature in SIGNATURES:
        out[signature] = {"flops_mean": float(np.mean([r[f"flops_{signature}"] for r in per_request])),
                          **latency_summary([r[f"latency_ms_{signature}"] for r in per_request])}
    return out


def evaluate(model: str, data_dir: str, out_dir: str, ks=DEFAULT_KS, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Evaluates the pushed cascade `model` on `data_dir`; writes the outputs to `out_dir` and
    returns the content of metrics.json."""
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"K values must be integers >= 1, got {ks}")
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists and is not empty (pass --overwrite to replace it)")
    version_dir = resolve_model(model)
    info = load_info(version_dir)
    data_features = c.load_features(data_dir)
    check_features(info.features, data_features, data_dir)
    day, logged = eval_day_requests(data_dir, data_features)
    funnel = funnel_requests(data_dir, data_features)
    caller = SignatureCaller(version_dir)

    scored = score_part(caller, logged, info, LOGGED, progress)
    request, scores = scored.arrays()
    label, group = np.asarray(scored.label), np.asarray(scored.group)
    result = {
        "model": os.path.abspath(version_dir), "data": os.path.abspath(data_dir), "eval_day": day,
        "settings": info.settings, "ks": list(ks), "funnel_ks": list(FUNNEL_KS), "funnel_top": FUNNEL_TOP,
        LOGGED: {"requests": len(logged), "samples": int(len(request)),
                 "metrics": {s: logged_metrics(request, label, group, scores[s], ks) for s in SIGNATURES}},
        "compute": {LOGGED: compute_summary(scored.per_request)},
    }
    if info.budget:
        result["budget"] = info.budget
    per_request = list(scored.per_request)
    if funnel is None:
        result[FUNNEL] = {"skipped": f"{data_dir} has no {c.FUNNEL_DIR}/ (held-out requests with every retrieved "
                                     f"candidate and its {c.ORACLE_COLUMN}); Recall@K of the oracle "
                                     f"top {FUNNEL_TOP} and NDCG@K need it"}
    else:
        funnel_scored = score_part(caller, funnel, info, FUNNEL, progress)
        f_request, f_scores = funnel_scored.arrays()
        utility = np.asarray(funnel_scored.utility, np.float64)
        result[FUNNEL] = {"requests": len(funnel), "rows": int(len(f_request)),
                          "metrics": {s: funnel_metrics(f_request, utility, f_scores[s]) for s in SIGNATURES}}
        result["compute"][FUNNEL] = compute_summary(funnel_scored.per_request)
        per_request += funnel_scored.per_request
    result = jsonable(result)

    with writer.atomic_directory(out_dir, overwrite=overwrite) as tmp:
        with open(os.path.join(tmp, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(tmp, "per_request.csv"), "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(per_request[0]))
            w.writeheader()
            w.writerows(per_request)
        report.write_evaluation_report(result, per_request, tmp)
    return result
