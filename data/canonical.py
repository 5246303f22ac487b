"""The canonical tf.Example of a sample, whatever the dataset's storage.

CSV and TFRecord datasets, with integer or string ids, all become one form: the one the
pipeline's ExampleGen writes and the TFDV schema describes.

- ids, `source`, `content_type` and categorical features: bytes (one value);
- sequence features: a bytes list of the id tokens, empty when the history is empty, so that a
  sequence and its target feature share one vocabulary or hash space;
- numeric features and `oracle_utility`: float; a missing value leaves the feature out;
- the other contract columns (day, click, positions, labels): int64.
"""
from __future__ import annotations

from hap.data import contract as c

INT, FLOAT, BYTES = "INT", "FLOAT", "BYTES"
_TYPE_OF_KIND = {c.ID: BYTES, c.STRING: BYTES, c.INT: INT, c.FLOAT: FLOAT,
                 c.CATEGORICAL: BYTES, c.SEQUENCE: BYTES, c.NUMERIC: FLOAT}


def canonical_types(features: c.FeatureSet, funnel: bool = False) -> dict[str, str]:
    """Column -> canonical tf.Example type (INT, FLOAT or BYTES)."""
    return {col: _TYPE_OF_KIND[kind] for col, kind in features.column_kinds(funnel).items()}


def to_example(row: dict, types: dict[str, str]):
    """A typed row (see hap.data.reader) as a canonical tf.train.Example."""
    import tensorflow as tf  # here, not above: `hap data validate` of CSV data never loads TensorFlow

    train = tf.train
    feature = {}
    for column, value in row.items():
        kind = types.get(column)
        if kind is None or value is None:
            continue
        if kind == BYTES:
            values = value if isinstance(value, list) else [value]
            feature[column] = train.Feature(bytes_list=train.BytesList(value=[v.encode("utf-8") for v in values]))
        elif kind == FLOAT:
            feature[column] = train.Feature(float_list=train.FloatList(value=[value]))
        else:
            feature[column] = train.Feature(int64_list=train.Int64List(value=[value]))
    return train.Example(features=train.Features(feature=feature))
