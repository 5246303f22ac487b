"""The request format of the cascade SavedModel: one user and context once, N candidates.

A pre-ranking call carries one request's user and context features once and its candidates'
item and cross features N times, as dense tensors named after their features (TF Serving's
Predict API carries dense tensors only):

| feature role   | categorical   | numeric        | sequence          |
|----------------|---------------|----------------|-------------------|
| user, context  | string [1]    | float32 [1]    | string [1, L]     |
| item, cross    | string [N]    | float32 [N]    | string [N, L]     |

Values are raw, as in the dataset (ids as their decimal or string form); Transform runs inside
the model. A missing categorical value is "", a missing numeric value is NaN, and a sequence is
padded at the end with "" to the longest one (L may be 0: an empty history).

The same tensors feed the `cascade`, `light` and `heavy` signatures; `item_embeddings` takes the
item features alone.
"""
from __future__ import annotations

import json
import math

import numpy as np

from hap.data import contract as c

REQUEST_ROLES = (c.USER, c.CONTEXT)
CANDIDATE_ROLES = (c.ITEM, c.CROSS)
MISSING_TOKEN = ""


def is_request_level(feature: c.Feature) -> bool:
    return feature.role in REQUEST_ROLES


def dtype_of(feature: c.Feature) -> np.dtype:
    return np.dtype(np.float32) if feature.kind == c.NUMERIC else np.dtype(object)


def shape_of(feature: c.Feature) -> tuple:
    """The signature shape of a feature's input: None is a free dimension."""
    rows = 1 if is_request_level(feature) else None
    return (rows, None) if feature.kind == c.SEQUENCE else (rows,)


def _column(feature: c.Feature, values: list) -> np.ndarray:
    if feature.kind == c.NUMERIC:
        return np.array([math.nan if v is None else float(v) for v in values], np.float32)
    if feature.kind == c.CATEGORICAL:
        return np.array([MISSING_TOKEN if v is None else str(v) for v in values], object)
    tokens = [[str(t) for t in (v or [])] for v in values]
    width = max((len(t) for t in tokens), default=0)
    out = np.full((len(tokens), width), MISSING_TOKEN, object)
    for i, t in enumerate(tokens):
        out[i, :len(t)] = t
    return out


def from_rows(rows: list[dict], features: c.FeatureSet, only: tuple[str, ...] | None = None) -> dict:
    """The request tensors of one request's typed rows (as `hap.data.reader` reads them).

    The user and context values come from the first row: the contract makes them the same on
    every row of a request. `only` restricts the output to these feature names.
    """
    if not rows:
        raise ValueError("a request needs at least one candidate row")
    out = {}
    for f in features.features:
        if only is not None and f.name not in only:
            continue
        values = [rows[0].get(f.name)] if is_request_level(f) else [r.get(f.name) for r in rows]
        out[f.name] = _column(f, values)
    return out


def from_json(doc: dict, features: c.FeatureSet, where: str = "request") -> dict:
    """Request tensors from `{"request": {feature: value}, "candidates": [{feature: value}, ...]}`.

    A feature left out is missing (see the module docstring); an unknown name is an error, as a
    typo would otherwise pass silently as a missing value.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), list):
        raise ValueError(f"{where}: expected an object with a 'candidates' list (and a 'request' object)")
    context = doc.get("request", {})
    problems = []
    request_names = {f.name for f in features.features if is_request_level(f)}
    for name in context:
        if name not in request_names:
            problems.append(f"{where}: request.{name} is not a user or context feature")
    for i, cand in enumerate(doc["candidates"]):
        for name in cand:
            if name not in features.names or name in request_names:
                problems.append(f"{where}: candidates[{i}].{name} is not an item or cross feature")
    if problems:
        raise ValueError("; ".join(problems))
    rows = [{**context, **cand} for cand in doc["candidates"]]
    return from_rows(rows, features)


def load_json(path: str, features: c.FeatureSet) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
    return from_json(doc, features, where=path)


def num_candidates(request: dict, features: c.FeatureSet) -> int:
    for f in features.features:
        if not is_request_level(f) and f.name in request:
            return len(request[f.name])
    raise ValueError("the request has no item or cross feature")
