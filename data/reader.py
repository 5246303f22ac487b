"""Streaming reads of a contract dataset, CSV or TFRecord, into typed rows.

A row is a dict from column to value: ids, categorical values and strings as `str`, integers as
`int`, numeric features and floats as `float` rounded to float32 (what a tf.Example holds, so CSV
and TFRecord give equal rows), sequences as a list of `str` tokens; a missing feature is `None`
(an empty list for a sequence). Files are read one row at a time, so memory stays flat.

A plain CSV file can also be read in byte ranges by independent workers (`file_ranges`,
`range_rows`), so one large file is not one worker's job.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import struct
from typing import Iterator

import numpy as np

from hap import storage
from hap.data import contract as c

CSV, TFRECORD = "csv", "tfrecord"
_SUFFIXES = {".csv": CSV, ".csv.gz": CSV, ".tfrecord.gz": TFRECORD}

# The size of the byte ranges a plain CSV file is cut into: large enough that opening and seeking
# per range is noise, small enough to spread a day's file over several workers.
DEFAULT_RANGE_BYTES = 64 << 20
# Block size of the byte scans that decide whether a file may be cut and count lines.
_SCAN_BYTES = 16 << 20


def file_format(path: str) -> str | None:
    for suffix, fmt in _SUFFIXES.items():
        if path.endswith(suffix):
            return fmt
    return None


def data_files(directory: str) -> tuple[str, list[str]]:
    """The format and sorted data files of `samples/` or `funnel/`; ContractError if unusable."""
    if not storage.isdir(directory):
        raise c.ContractError([f"{directory}: missing directory"])
    files = [p for p in storage.glob(storage.join(directory, "*")) if file_format(p)]
    if not files:
        raise c.ContractError([f"{directory}: no data files (*.csv, *.csv.gz or *.tfrecord.gz)"])
    formats = {file_format(p) for p in files}
    if len(formats) > 1:
        raise c.ContractError([f"{directory}: mixes CSV and TFRecord files; a dataset is all one or the other"])
    return formats.pop(), files


def unknown_files(directory: str) -> list[str]:
    return [p for p in storage.glob(storage.join(directory, "*")) if not file_format(p)]


@dataclasses.dataclass
class RawRow:
    """One record as stored: CSV fields as strings, tf.Example features as value lists."""

    location: str
    values: dict
    problems: list[str]


def csv_header(path: str) -> list[str]:
    with storage.open(path) as f:
        return next(csv.reader(f), [])


def _csv_row(where: str, header: list[str], values: list[str]) -> RawRow:
    problems = []
    if len(values) != len(header):
        problems.append(f"{where}: {len(values)} fields where the header has {len(header)}")
    return RawRow(where, dict(zip(header, values)), problems)


def iter_csv(path: str) -> Iterator[RawRow]:
    with storage.open(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        for values in reader:
            yield _csv_row(f"{path}:{reader.line_num}", header, values)


def _tfrecord_payloads(path: str) -> Iterator[bytes]:
    """Records of a GZIP TFRecord file. The framing is read here rather than through tf.data,
    whose per-record eager overhead made validation several times slower; gzip's own CRC still
    catches corruption."""
    with storage.open(path, "rb") as f:
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
    if abs(x) > c.MAX_ABS_NUMERIC:
        raise ValueError(f"{x!r} is beyond the contract's bound |x| <= {c.MAX_ABS_NUMERIC:.0e}")
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
            value = float(raw)
        except ValueError:
            raise ValueError(f"not a number: {raw!r}") from None
        return _float32(value)

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


def _checked_row(raw: RawRow, kinds: dict[str, str]) -> tuple[dict, list[str]]:
    """The typed row of `raw` and a message per problem that makes it unusable."""
    row, problems = parse_row(raw, kinds)
    bad = {column for column, _ in problems}
    messages = [message for _, message in problems]
    messages += [f"{raw.location}: missing required column {k!r}"
                 for k in c.REQUIRED_COLUMNS if k not in row and k not in bad]
    return row, messages


def _malformed(messages: list[str]) -> c.ContractError:
    return c.ContractError(messages + ["(`hap data validate` reports every problem of a dataset)"])


def typed_row(raw: RawRow, kinds: dict[str, str]) -> dict:
    """The typed row of `raw`; ContractError naming its file, row and column if malformed."""
    row, messages = _checked_row(raw, kinds)
    if messages:
        raise _malformed(messages)
    return row


def file_rows(path: str, kinds: dict[str, str]) -> Iterator[dict]:
    """Typed rows of one data file; ContractError at the first malformed row."""
    for raw in iter_raw(path):
        yield typed_row(raw, kinds)


@dataclasses.dataclass(frozen=True)
class FileRange:
    """The rows of `path` whose lines start in bytes [start, end) of it, `header` being the file's
    CSV header; with `end` None, every row of `path`, read as `file_rows` reads it."""

    path: str
    start: int = 0
    end: int | None = None
    header: tuple[str, ...] = ()


def file_ranges(path: str, range_bytes: int = DEFAULT_RANGE_BYTES) -> list[FileRange]:
    """`path` as ranges of `range_bytes` bytes (the last one shorter) that `range_rows` reads
    independently of each other.

    Only a plain CSV file whose lines are its records is cut. A compressed file cannot be read
    from the middle. In a file with a quote character, which the contract does not rule out, a
    quoted field may hold a line break, so a line need not start a record; and a carriage return
    without a line feed after it ends a record for the csv module but not a line here. Such
    files, and files of at most `range_bytes`, are one range. Telling them apart costs one byte
    scan of the file, at memchr speed: far below what parsing it costs.
    """
    if range_bytes < 1:
        raise ValueError(f"range_bytes must be >= 1, got {range_bytes}")
    if not path.endswith(".csv"):
        return [FileRange(path)]
    size = storage.size(path)
    if size <= range_bytes or not _lines_are_records(path):
        return [FileRange(path)]
    header = tuple(csv_header(path))
    return [FileRange(path, start, min(start + range_bytes, size), header)
            for start in range(0, size, range_bytes)]


def _lines_are_records(path: str) -> bool:
    """Whether the CSV file has no quote character and a line feed after every carriage return."""
    with storage.open(path, "rb") as f:
        while block := f.read(_SCAN_BYTES):
            if block.endswith(b"\r"):
                block += f.read(1)  # a "\r\n" cut by the block boundary is not a lone "\r"
            if b'"' in block or (b"\r" in block and block.count(b"\r") != block.count(b"\r\n")):
                return False
    return True


def range_rows(file_range: FileRange, kinds: dict[str, str]) -> Iterator[dict]:
    """Typed rows of one range of `file_ranges`; ContractError at the first malformed row, which
    names its file and line as `file_rows` does."""
    if file_range.end is None:
        yield from file_rows(file_range.path, kinds)
        return
    path, header = file_range.path, list(file_range.header)
    with storage.open(path, "rb") as f:
        first = _first_line_start(f, file_range.start)
        records = csv.reader(_lines(f, first, file_range.end))
        for values in records:
            row, messages = _checked_row(_csv_row(path, header, values), kinds)
            if messages:
                # The line is counted only now, and the messages made again with it: the range
                # does not know how many lines precede it. Every line of a file that
                # `file_ranges` cuts is one record.
                line = _line_number(path, first) + records.line_num - 1
                _, messages = _checked_row(_csv_row(f"{path}:{line}", header, values), kinds)
                raise _malformed(messages)
            yield row


def _first_line_start(f, start: int) -> int:
    """The offset of the first data line that starts at or after byte `start`, with `f` there."""
    if start == 0:
        return len(f.readline())  # the header
    # The rest of the line that holds byte start - 1, which belongs to the previous range; just
    # that byte when it is the line break before `start`.
    f.seek(start - 1)
    return start - 1 + len(f.readline())


def _lines(f, offset: int, end: int) -> Iterator[str]:
    """The lines of binary file `f`, positioned at line start `offset`, that start before `end`."""
    while offset < end:
        line = f.readline()
        if not line:
            return
        yield line.decode("utf-8")
        offset += len(line)


def _line_number(path: str, offset: int) -> int:
    """The 1-based number of the line of `path` that starts at byte `offset`."""
    breaks = 0
    with storage.open(path, "rb") as f:
        while offset > 0 and (block := f.read(min(offset, _SCAN_BYTES))):
            breaks += block.count(b"\n")
            offset -= len(block)
    return breaks + 1


def read_rows(dataset_dir: str, part: str = c.SAMPLES_DIR,
              features: c.FeatureSet | None = None) -> Iterator[dict]:
    """Typed rows of `samples/` or `funnel/`; ContractError at the first malformed row."""
    features = features or c.load_features(dataset_dir)
    kinds = features.column_kinds(funnel=part == c.FUNNEL_DIR)
    _, files = data_files(os.path.join(dataset_dir, part))
    for path in files:
        yield from file_rows(path, kinds)


def keyed_rows(dataset_dir: str, part: str, kinds: dict[str, str]) -> Iterator[tuple[str, int, RawRow]]:
    """(request_id, day, stored row) of each row of `samples/` or `funnel/`, only those two
    columns parsed (`typed_row` parses the rest): for readers that want a part of a dataset the
    pipeline has already validated, fast. Parsing a row costs several times reading it."""
    _, files = data_files(os.path.join(dataset_dir, part))
    for path in files:
        for raw in iter_raw(path):
            try:
                request_id = parse_value(kinds["request_id"], raw.values["request_id"])
                day = parse_value(kinds["day"], raw.values["day"])
            except (KeyError, ValueError):
                raise _malformed(_checked_row(raw, kinds)[1]) from None
            yield request_id, day, raw
