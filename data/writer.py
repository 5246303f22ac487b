"""Writing contract datasets: CSV or GZIP TFRecord shards, into a directory that appears whole."""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile

from hap.data import reader


@contextlib.contextmanager
def atomic_directory(out_dir: str, overwrite: bool = False):
    """Yields a temporary directory next to `out_dir` that becomes `out_dir` on success.

    On any error the temporary directory is removed and `out_dir` is left as it was, so a reader
    never sees a half-written dataset.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists and is not empty (pass --overwrite to replace it)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
        os.rename(out_dir, os.path.join(old, "replaced"))
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def _csv_field(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


class CsvShardWriter:
    def __init__(self, path: str, columns: tuple[str, ...]):
        self.columns = columns
        self._file = open(path, "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(columns)

    def write(self, table: dict[str, list]) -> None:
        fields = [[_csv_field(v) for v in table[name]] for name in self.columns]
        self._csv.writerows(zip(*fields))

    def close(self) -> None:
        self._file.close()


class TFRecordShardWriter:
    """tf.Example per row: int -> int64_list, str -> bytes_list, float -> float_list,
    list -> int64_list (possibly empty); a missing value (None) is left out of the example."""

    def __init__(self, path: str, columns: tuple[str, ...]):
        import tensorflow as tf  # here, not above: `hap data simulate --format csv` never loads TensorFlow

        self._tf = tf
        self.columns = columns
        self._writer = tf.io.TFRecordWriter(path, options="GZIP")

    def _feature(self, value):
        train = self._tf.train
        if isinstance(value, list):
            return train.Feature(int64_list=train.Int64List(value=value))
        if isinstance(value, str):
            return train.Feature(bytes_list=train.BytesList(value=[value.encode("utf-8")]))
        if isinstance(value, float):
            return train.Feature(float_list=train.FloatList(value=[value]))
        return train.Feature(int64_list=train.Int64List(value=[value]))

    def write(self, table: dict[str, list]) -> None:
        train = self._tf.train
        n = len(table[self.columns[0]])
        for i in range(n):
            feature = {name: self._feature(table[name][i]) for name in self.columns if table[name][i] is not None}
            self._writer.write(train.Example(features=train.Features(feature=feature)).SerializeToString())

    def close(self) -> None:
        self._writer.close()


def shard_writer(directory: str, stem: str, fmt: str, columns: tuple[str, ...]):
    if fmt == reader.CSV:
        return CsvShardWriter(os.path.join(directory, f"{stem}.csv"), columns)
    if fmt == reader.TFRECORD:
        return TFRecordShardWriter(os.path.join(directory, f"{stem}.tfrecord.gz"), columns)
    raise ValueError(f"unknown format {fmt!r}: expected csv or tfrecord")
