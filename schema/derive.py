"""Derives a TFDV schema for the canonical examples of any contract dataset from its features.yaml.

The derived schema holds what the contract guarantees for every dataset: the type of every
column, that required columns are present once per sample, the domain of `source`, 0/1 labels,
positions >= -1, day >= 0, one value per categorical or numeric feature. It cannot know what is
particular to a dataset (the content types it uses, the ranges of its numeric features, how
long its sequences are); the curated `schema.pbtxt` beside this module adds those for the
default feature set, and a team adopting HAP on its own logs curates its derived schema the
same way (docs/data.md, "Schemas").
"""
from __future__ import annotations

import os
import tempfile

import yaml
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from hap.data import canonical
from hap.data import contract as c

_TYPES = {canonical.INT: schema_pb2.INT, canonical.FLOAT: schema_pb2.FLOAT, canonical.BYTES: schema_pb2.BYTES}


def load_yaml(path: str):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def derive_schema(features: c.FeatureSet) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    kinds = features.column_kinds()
    for column, ctype in canonical.canonical_types(features).items():
        f = schema.feature.add(name=column, type=_TYPES[ctype])
        kind = kinds[column]
        if column in c.REQUIRED_COLUMNS:
            f.presence.min_fraction = 1.0
            f.presence.min_count = 1
        else:
            f.presence.min_count = 0
        if kind == c.SEQUENCE:
            f.value_count.min = 0
        else:
            f.value_count.min = 1
            f.value_count.max = 1
        if column == "source":
            f.string_domain.name = "source"
            f.string_domain.value.extend(c.SOURCES)
        elif column in c.BINARY_LABELS:
            f.int_domain.min, f.int_domain.max = 0, 1
            f.int_domain.is_categorical = True
        elif column in c.POSITION_COLUMNS:
            f.int_domain.min = -1
        elif column in ("day", "dwell_ms"):
            f.int_domain.min = 0
        elif kind == c.NUMERIC:
            f.float_domain.disallow_nan = True
            f.float_domain.disallow_inf = True
    return schema


def load_schema(path: str) -> schema_pb2.Schema:
    with open(path, encoding="utf-8") as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


def write_schema(schema: schema_pb2.Schema, path: str) -> None:
    """Writes text-format `schema` to `path` through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".schema-", suffix=".pbtxt", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text_format.MessageToString(schema))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
