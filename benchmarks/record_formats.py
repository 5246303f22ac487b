"""What the Trainers' record format costs: size and parsing of three forms of one request.

    .venv/bin/python benchmarks/record_formats.py --run RUN [--records DIR] [--requests 4000]

On the first `--requests` train records of a finished `hap run` (RUN's RequestGrouper output, or
DIR), each request in three forms:

- request Example: the records as the RequestGrouper writes them (models/request_records.py):
  context features once, each candidate feature one column of all candidates' values;
- ExampleListWithContext (TF Serving's input.proto, which TF Ranking reads): the context
  Example and one whole Example per candidate, parsed with `tf.io.decode_proto` then
  `tf.io.parse_example` (as TF Ranking does, and as the Trainers did before);
- SequenceExample (TF Ranking's other format): the context, and one feature list per candidate
  feature, parsed with `tf.io.parse_sequence_example`.

For each: mean bytes per request, raw and gzipped (the files are gzipped TFRecords; the
shuffle buffer holds raw records), and the wall and CPU milliseconds (this process, all threads)
to parse a batch of the light model's requests per batch, batches held in memory, parsed by a
traced function, the second of two passes. The ExampleListWithContext and SequenceExample forms
are parsed into the same tensors as the request Example, which the script checks. Prints a
markdown table.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from google.protobuf import descriptor_pb2
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import input_pb2

from hap.models import preprocessing, request_records, trainer_module, transformed
from hap.pipeline import run_report
from results import command_line, table, write_result

_ELWC = input_pb2.ExampleListWithContext.DESCRIPTOR.full_name


def _descriptor_source() -> bytes:
    """input.proto and the protos it imports, for decode_proto, which cannot see the Python
    protobuf registry."""
    files = descriptor_pb2.FileDescriptorSet()
    for module in (feature_pb2, example_pb2, input_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    return b"bytes://" + files.SerializeToString()


def _candidates(record: example_pb2.Example, spec: dict, context: tuple[str, ...]) -> list[dict]:
    """The request's candidates, each {name: Feature}."""
    columns = record.features.feature
    n = len(columns[transformed.SAMPLE_GROUP].int64_list.value)
    out = [{} for _ in range(n)]
    for name, feature in spec.items():
        if name in context:
            continue
        size = int(np.prod(feature.shape))
        kind = columns[name].WhichOneof("kind")
        values = getattr(columns[name], kind).value
        for i, candidate in enumerate(out):
            candidate[name] = feature_pb2.Feature(**{kind: type(getattr(columns[name], kind))(
                value=values[i * size:(i + 1) * size])})
    return out


def as_elwc(record, spec, context) -> bytes:
    elwc = input_pb2.ExampleListWithContext()
    for name in context:
        elwc.context.features.feature[name].CopyFrom(record.features.feature[name])
    for candidate in _candidates(record, spec, context):
        example = elwc.examples.add()
        for name, feature in candidate.items():
            example.features.feature[name].CopyFrom(feature)
    return elwc.SerializeToString()


def as_sequence_example(record, spec, context) -> bytes:
    sequence = tf.train.SequenceExample()
    for name in context:
        sequence.context.feature[name].CopyFrom(record.features.feature[name])
    for candidate in _candidates(record, spec, context):
        for name, feature in candidate.items():
            sequence.feature_lists.feature_list[name].feature.add().CopyFrom(feature)
    return sequence.SerializeToString()


def elwc_parser(spec: dict, context: tuple[str, ...]):
    descriptor_source = _descriptor_source()

    def parse(serialized):
        sizes, (contexts, candidates) = tf.io.decode_proto(
            serialized, _ELWC, ["context", "examples"], [tf.string, tf.string], descriptor_source=descriptor_source)
        counts = sizes[:, 1]
        flat = tf.boolean_mask(candidates, tf.sequence_mask(counts, tf.shape(candidates)[1]))
        out = tf.io.parse_example(flat, {k: v for k, v in spec.items() if k not in context})
        per_request = tf.io.parse_example(contexts[:, 0], {k: v for k, v in spec.items() if k in context})
        out.update({name: tf.repeat(value, counts, axis=0) for name, value in per_request.items()})
        return out
    return parse


def sequence_example_parser(spec: dict, context: tuple[str, ...]):
    def parse(serialized):
        per_request, lists, _ = tf.io.parse_sequence_example(
            serialized, context_features={k: v for k, v in spec.items() if k in context},
            sequence_features={k: tf.io.RaggedFeature(v.dtype) for k, v in spec.items() if k not in context})
        counts = lists[transformed.SAMPLE_GROUP].row_lengths()
        out = {name: tf.reshape(value.flat_values, [-1, *spec[name].shape]) for name, value in lists.items()}
        out.update({name: tf.repeat(value, counts, axis=0) for name, value in per_request.items()})
        return out
    return parse


def _parse_ms(serialized: list[bytes], parse, requests_per_batch: int) -> tuple[float, float]:
    batches = [tf.constant(serialized[i:i + requests_per_batch]) for i in range(0, len(serialized), requests_per_batch)]
    traced = tf.function(parse)
    for _ in range(2):
        start = (time.perf_counter(), time.process_time())
        for batch in batches:
            traced(batch)
    return (1000.0 * (time.perf_counter() - start[0]) / len(batches),
            1000.0 * (time.process_time() - start[1]) / len(batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `hap run` output directory")
    parser.add_argument("--records", help="request records to read instead of the run's RequestGrouper output")
    parser.add_argument("--requests", type=int, default=4000, help="train records measured")
    args = parser.parse_args()
    tft_output = tft.TFTransformOutput(run_report.latest_artifact(args.run, "Transform", "TransformGraph").uri)
    config = json.loads(run_report.latest_execution_property(args.run, "Trainer_light", "custom_config"))
    records_uri = args.records or run_report.latest_artifact(args.run, "RequestGrouper", "Examples").uri
    records = request_records.RequestRecords.from_split(os.path.join(records_uri, "Split-train", "*"),
                                                        tft_output.transformed_feature_spec(),
                                                        preprocessing.feature_set_from_config(config))
    settings = trainer_module.TrainerSettings.from_config(config)
    requests_per_batch = records.only(settings.routing.trains_on).requests_per_batch(settings.batch_size)
    spec, context = records.feature_spec, records.context
    native = [r.numpy() for r in tf.data.TFRecordDataset(list(records.files), "GZIP").take(args.requests)]
    parsed = [example_pb2.Example.FromString(r) for r in native]
    forms = {"request Example": (native, records.parse),
             "ExampleListWithContext": ([as_elwc(r, spec, context) for r in parsed], elwc_parser(spec, context)),
             "SequenceExample": ([as_sequence_example(r, spec, context) for r in parsed],
                                 sequence_example_parser(spec, context))}
    want = records.parse(tf.constant(native[:requests_per_batch]))
    print(f"{len(native):,} train records of {records_uri}, {requests_per_batch} requests per batch\n")
    columns = ["form", "bytes/request", "gzipped bytes/request", "parse ms/batch (wall)", "parse ms/batch (CPU)"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    rows = []
    for name, (serialized, parse) in forms.items():
        got = parse(tf.constant(serialized[:requests_per_batch]))
        for feature, value in want.items():
            np.testing.assert_array_equal(got[feature].numpy(), value.numpy(), err_msg=f"{name}: {feature}")
        wall, cpu = _parse_ms(serialized, parse, requests_per_batch)
        rows.append([name, f"{np.mean([len(s) for s in serialized]):,.0f}",
                     f"{len(gzip.compress(b''.join(serialized))) / len(serialized):,.0f}", f"{wall:.2f}", f"{cpu:.2f}"])
        print("| " + " | ".join(rows[-1]) + " |")
    write_result("record_formats", command_line(), table(columns, rows),
                 notes=f"{len(native):,} train records of {records_uri}, {requests_per_batch} requests per batch")


if __name__ == "__main__":
    main()
