"""The request layout of the cascade SavedModel: one user and context once, N candidates.

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

`RequestLayout` is the one owner of this layout: the cascade's signatures, the warm-up records,
the gRPC client, `hap evaluate` and `hap benchmark` all build, check and convert requests with it
(numpy arrays, tensors, one tf.Example per candidate); `predict_request` puts any inputs on
TF Serving's wire.
"""
from __future__ import annotations

import json
import math

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2

from hap.data import canonical
from hap.data import contract as c

REQUEST_ROLES = (c.USER, c.CONTEXT)
CANDIDATE_ROLES = (c.ITEM, c.CROSS)
MISSING_TOKEN = ""
MAX_ABS_NUMERIC = c.MAX_ABS_NUMERIC
_BOUND = f"{MAX_ABS_NUMERIC:.0e}".replace("e+", "e")  # "1e18"


def is_request_level(feature: c.Feature) -> bool:
    return feature.role in REQUEST_ROLES


def shape_of(feature: c.Feature) -> tuple:
    """The signature shape of a feature's input: None is a free dimension."""
    rows = 1 if is_request_level(feature) else None
    return (rows, None) if feature.kind == c.SEQUENCE else (rows,)


def dtype_of(feature: c.Feature) -> tf.DType:
    return tf.float32 if feature.kind == c.NUMERIC else tf.string


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


class RequestLayout:
    """The inputs of a cascade request for one feature set, and their conversions."""

    def __init__(self, features: c.FeatureSet):
        self.features = features
        self.request_features = tuple(f for f in features.features if is_request_level(f))
        self.candidate_features = tuple(f for f in features.features if not is_request_level(f))

    @classmethod
    def from_signature_def(cls, signature_def) -> "RequestLayout":
        """The layout of a served cascade signature, read from its SignatureDef (GetModelMetadata),
        so a client needs no copy of the feature set: an input of shape [1] or [1, L] is request
        level, one of [N] or [N, L] a candidate's; kinds follow dtype and rank."""
        features = []
        for name, info in sorted(signature_def.inputs.items()):
            dims = [d.size for d in info.tensor_shape.dim]
            kind = c.NUMERIC if info.dtype == tf.float32.as_datatype_enum else (
                c.SEQUENCE if len(dims) == 2 else c.CATEGORICAL)
            features.append(c.Feature(name, c.USER if dims and dims[0] == 1 else c.ITEM, kind,
                                      max_len=dims[1] if kind == c.SEQUENCE else None))
        return cls(c.FeatureSet(tuple(features)))

    def signature(self, roles=c.ROLES) -> dict[str, tf.TensorSpec]:
        """The TensorSpecs of the request inputs whose feature role is in `roles`."""
        return {f.name: tf.TensorSpec(shape_of(f), dtype_of(f), name=f.name)
                for f in self.features.features if f.role in roles}

    # -- building requests -----------------------------------------------------------------------

    def from_rows(self, rows: list[dict], only: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The request arrays of one request's typed rows (as `hap.data.reader` reads them).

        The user and context values come from the first row: the contract makes them the same on
        every row of a request. `only` restricts the output to these feature names.
        """
        if not rows:
            raise ValueError("a request needs at least one candidate row")
        out = {}
        for f in self.features.features:
            if only is not None and f.name not in only:
                continue
            values = [rows[0].get(f.name)] if is_request_level(f) else [r.get(f.name) for r in rows]
            out[f.name] = _column(f, values)
        return out

    def from_json(self, doc: dict, where: str = "request") -> dict[str, np.ndarray]:
        """Request arrays from `{"request": {feature: value}, "candidates": [{feature: value}, ...]}`.

        A feature left out is missing (see the module docstring); an unknown name is an error, as a
        typo would otherwise pass silently as a missing value.
        """
        if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), list):
            raise ValueError(f"{where}: expected an object with a 'candidates' list (and a 'request' object)")
        context = doc.get("request", {})
        problems = []
        request_names = {f.name for f in self.request_features}
        for name in context:
            if name not in request_names:
                problems.append(f"{where}: request.{name} is not a user or context feature")
        for i, cand in enumerate(doc["candidates"]):
            for name in cand:
                if name not in self.features.names or name in request_names:
                    problems.append(f"{where}: candidates[{i}].{name} is not an item or cross feature")
        if problems:
            raise ValueError("; ".join(problems))
        return self.from_rows([{**context, **cand} for cand in doc["candidates"]])

    def load_json(self, path: str) -> dict[str, np.ndarray]:
        with open(path, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON: {e}") from None
        return self.from_json(doc, where=path)

    def missing(self, n: int) -> dict[str, np.ndarray]:
        """A request of n candidates whose every value is missing, sequences at full length."""
        out = {}
        for f in self.features.features:
            rows = 1 if is_request_level(f) else n
            if f.kind == c.NUMERIC:
                out[f.name] = np.full(rows, np.nan, np.float32)
            elif f.kind == c.CATEGORICAL:
                out[f.name] = np.full(rows, MISSING_TOKEN, object)
            else:
                out[f.name] = np.full((rows, f.max_len), MISSING_TOKEN, object)
        return out

    def num_candidates(self, request: dict) -> int:
        for f in self.candidate_features:
            if f.name in request:
                return len(request[f.name])
        raise ValueError("the request has no item or cross feature")

    # -- converting requests ---------------------------------------------------------------------

    def to_tensors(self, request: dict) -> dict[str, tf.Tensor]:
        return {name: tf.constant(value, dtype=dtype_of(self.features[name])) for name, value in request.items()}

    def to_examples(self, request: dict) -> list[bytes]:
        """One serialized canonical tf.Example per candidate (data/canonical.py), the request's user
        row beside each: what the `score_examples` signature and TFMA read."""
        types = canonical.canonical_types(self.features)
        return [canonical.to_example(self._row(request, i), types).SerializeToString()
                for i in range(self.num_candidates(request))]

    def _row(self, request: dict, i: int) -> dict:
        """Candidate i as a typed row, missing values as None."""
        row = {}
        for f in self.features.features:
            value = request[f.name][0 if is_request_level(f) else i]
            if f.kind == c.NUMERIC:
                row[f.name] = None if np.isnan(value) else float(value)
            elif f.kind == c.CATEGORICAL:
                row[f.name] = None if value == MISSING_TOKEN else str(value)
            else:
                row[f.name] = [str(t) for t in value if t != MISSING_TOKEN]
        return row


def numeric_problem(name: str, values) -> str | None:
    """Why a numeric input is refused, or None: a value that is infinite or finite but absurd,
    |x| > MAX_ABS_NUMERIC. NaN is the missing value and passes.

    Both are refused for the same reason: z-scored by Transform, such a value saturates every
    score it reaches, so in a user or context feature it makes all candidates' scores equal (the
    ranking falls back to the candidates' order in the request), and in one candidate's item or
    cross feature it puts that candidate first or last and can take one of the K routed slots
    from another candidate. Refusing the request (INVALID_ARGUMENT, naming the input and the
    value's index) is what the cascade graph does with an infinite value, under TF Serving too.

    The bound is far above any magnitude a feature of the contract takes (counts, prices,
    durations, microsecond timestamps: about 1.8e15) and its square still fits a float32
    (3.4e38). It is not an outlier test: a finite value far outside the training data but within
    the bound is served as it is (docs/serving.md, "Numerics: the contract's bound")."""
    x = np.asarray(values, np.float64)
    bad = np.flatnonzero(np.abs(x) > MAX_ABS_NUMERIC)  # NaN compares False: a missing value
    if not bad.size:
        return None
    at = [int(i) for i in np.unravel_index(bad[0], x.shape)]
    value = x.flat[bad[0]]
    what = "infinite" if np.isinf(value) else f"{value:g}, beyond the bound of {_BOUND}"
    more = f" ({bad.size} such values)" if bad.size > 1 else ""
    return (f"input {name!r}: the numeric value at {at} is {what}{more}; send a finite number with "
            f"|x| <= {_BOUND}, or NaN for a missing value")


def predict_request(model_name: str, signature: str, inputs: dict) -> predict_pb2.PredictRequest:
    """A PredictRequest of numpy `inputs` (object arrays as strings), well-formed or not: the
    tests and the load benchmark send malformed ones on purpose."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for name, value in inputs.items():
        value = np.asarray(value)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string if value.dtype == object else None))
    return request
