"""Streaming reads of a contract dataset, CSV or TFRecord, into typed rows.

A row is a dict from column to value: ids, categorical values and strings as `str`, integers as
`int`, numeric features and floats as `float` rounded to float32 (what a tf.Example holds, so CSV
and TFRecord give equal rows), sequences as a list of `str` tokens; a missing feature is `None`
(an empty list for a sequence). Files are read one row at a time, so memory stays flat.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import io
import math
import os
import struct
from typing import Iterator

import numpy as np

from hap.data import contract as c

CSV, TFRECORD = "csv", "tfrecord"
_SUFFIXES = {".csv": CSV, ".csv.gz": CSV, ".tfrecord.gz": TFRECORD}


def file_format(path: str) -> str | None:
    for suffix, fmt in _SUFFIXES.items():
        if path.endswith(suffix):
            return fmt
    return None


def data_files(directory: str) -> tuple[str, list[str]]:
    """The format and sorted data files of `samples/` or `funnel/`; ContractError if unusable."""
    if not os.path.isdir(directory):
        raise c.ContractError([f"{directory}: missing directory"])
    files = sorted(p for p in glob.glob(os.path.join(directory, "*")) if file_format(p))
    if not files:
        raise c.ContractError([f"{directory}: no data files (*.csv, *.csv.gz or *.tfrecord.gz)"])
    formats = {file_format(p) for p in files}
    if len(formats) > 1:
        raise c.ContractError([f"{directory}: mixes CSV and TFRecord files; a dataset is all one or the other"])
    return formats.pop(), files


def unknown_files(directory: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(directory, "*")) if not file_format(p))


@dataclasses.dataclass
class RawRow:
    """One record as stored: CSV fields as strings, tf.Example features as value lists."""

    location: str
    values: dict
    problems: list[str]


def _open_text(path: str):
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def csv_header(path: str) -> list[str]:
    with _open_text(path) as f:
        return next(csv.reader(f), [])


def iter_csv(path: str) -> Iterator[RawRow]:
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        for values in reader:
            where = f"{path}:{reader.line_num}"
            problems = []
            if len(values) != len(header):
                problems.append(f"{where}: {len(values)} fields where the header has {len(header)}")
            yield RawRow(where, dict(zip(header, values)), problems)


def _tfrecord_payloads(path: str) -> Iterator[bytes]:
    """Records of a GZIP TFRecord file. The framing is read here rather than through tf.data,
    whose per-record eager overhead made validation several times slower; gzip's own CRC still
    catches corruption."""
    with gzip.open(path, "rb") as f:
        while True:
            head = f.read(12)  # uint64 length + uint32 masked CRC of the length
            if not head:
                return
            if len(head) < 12:
                raise ValueError("truncated record header")
            (length,) = struct.unpack("<Q", head[:8])
            payload = f.read(length)
            if len(payload) < length or len(f.read(4)) < 4:
                raise ValueError("truncated record")
            yield payload


def iter_tfrecord(path: str) -> Iterator[RawRow]:
    # Here, not above: reading CSV data never loads TensorFlow.
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    index = 0
    try:
        for payload in _tfrecord_payloads(path):
            index += 1
            example = example_pb2.Example.FromString(payload)
            values = {}
            for key, feature in example.features.feature.items():
                which = feature.WhichOneof("kind")
                values[key] = list(getattr(feature, which).value) if which else []
            yield RawRow(f"{path}: record {index}", values, [])
    except (OSError, EOFError, ValueError, DecodeError) as e:
        raise c.ContractError([f"{path}: unreadable after record {index}: {e}"]) from None


def iter_raw(path: str) -> Iterator[RawRow]:
    return iter_tfrecord(path) if file_format(path) == TFRECORD else iter_csv(path)


def _single(raw: list, types: tuple[type, ...], what: str):
    if len(raw) != 1:
        raise ValueError(f"expected one {what} value, got {len(raw)}")
    if not isinstance(raw[0], types):
        raise ValueError(f"expected {what}, got {type(raw[0]).__name__}")
    return raw[0]


def _float32(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x!r}")
    return float(np.float32(x))


def _token(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def parse_value(kind: str, raw):
    """The typed value of a raw CSV field (str) or tf.Example value list; ValueError if malformed.

    Returns None (or [] for sequences) for a missing optional value, and raises for a missing
    required one.
    """
    if isinstance(raw, str):
        if kind == c.SEQUENCE:
            tokens = raw.split()
            for t in tokens:
                try:
                    int(t)
                except ValueError:
                    raise ValueError(f"malformed sequence: {t!r} is not an integer id "
                                     "(sequences are space-separated integers)") from None
            return tokens
        if raw == "":
            if kind in (c.CATEGORICAL, c.NUMERIC):
                return None
            raise ValueError("empty value in a required column")
        if kind in (c.ID, c.STRING, c.CATEGORICAL):
            return raw
        if kind == c.INT:
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"not an integer: {raw!r}") from None
        try:
            return _float32(float(raw))
        except ValueError:
            raise ValueError(f"not a number: {raw!r}") from None

    if kind == c.SEQUENCE:
        if raw and not all(isinstance(v, int) for v in raw):
            raise ValueError("malformed sequence: expected an int64 list")
        return [str(v) for v in raw]
    if not raw:
        if kind in (c.CATEGORICAL, c.NUMERIC):
            return None
        raise ValueError("missing value in a required column")
    if kind in (c.ID, c.CATEGORICAL):
        return _token(_single(raw, (int, bytes), "int64 or bytes"))
    if kind == c.STRING:
        return _token(_single(raw, (bytes,), "bytes"))
    if kind == c.INT:
        return _single(raw, (int,), "int64")
    return _float32(_single(raw, (float, int), "float"))


def parse_row(raw: RawRow, kinds: dict[str, str]) -> tuple[dict, list[tuple[str | None, str]]]:
    """Typed values of the known columns of `raw`, and (column, message) per malformed one."""
    row, problems = {}, [(None, p) for p in raw.problems]
    for column, kind in kinds.items():
        value = raw.values.get(column)
        if value is None:
            value = "" if kind in (c.CATEGORICAL, c.NUMERIC, c.SEQUENCE) else None
            if value is None:
                continue
        try:
            row[column] = parse_value(kind, value)
        except ValueError as e:
            problems.append((column, f"{raw.location}: column {column!r}: {e}"))
    return row, problems


def file_rows(path: str, kinds: dict[str, str]) -> Iterator[dict]:
    """Typed rows of one data file; ContractError at the first malformed row."""
    for raw in iter_raw(path):
        row, problems = parse_row(raw, kinds)
        bad = {column for column, _ in problems}
        messages = [message for _, message in problems]
        messages += [f"{raw.location}: missing required column {k!r}"
                     for k in c.REQUIRED_COLUMNS if k not in row and k not in bad]
        if messages:
            raise c.ContractError(messages + ["(`hap data validate` reports every problem of a dataset)"])
        yield row


def read_rows(dataset_dir: str, part: str = c.SAMPLES_DIR,
              features: c.FeatureSet | None = None) -> Iterator[dict]:
    """Typed rows of `samples/` or `funnel/`; ContractError at the first malformed row."""
    features = features or c.load_features(dataset_dir)
    kinds = features.column_kinds(funnel=part == c.FUNNEL_DIR)
    _, files = data_files(os.path.join(dataset_dir, part))
    for path in files:
        yield from file_rows(path, kinds)
