"""ContractExampleGen against TFX's own CsvExampleGen on the same CSV files, side by side:

    .venv/bin/python benchmarks/example_gen.py --data /tmp/eg_data --out /tmp/eg_bench

`--data` is a contract dataset with CSV samples (`hap data simulate` writes one). Each executor
runs directly through its `Executor().Do`, as the executor tests run it, under Beam's
DirectRunner in memory with 1 worker and in multi-processing mode with 2 worker processes;
ContractExampleGen once per `--range-bytes` (the size of the byte ranges it cuts a plain CSV
file into). CsvExampleGen reads `<data>/samples/*.csv` as one input split, hash-split 2:1 into
train and eval, its default. Every run is a fresh process, ended with its Beam workers after
`--timeout` seconds. Seconds are those of `Do`: pipeline construction, worker start, reading,
conversion and writing. Prints a markdown table with each run's ratio to CsvExampleGen under
the same Beam configuration and the 1-minute load average when it started, since other work on
a shared machine skews it.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import time

import hap  # noqa: F401  (Keras 2 before TensorFlow)

from hap.data import contract as c
from hap.data import reader
from results import command_line, table, write_result

CSV_EXAMPLE_GEN, CONTRACT_EXAMPLE_GEN = "CsvExampleGen", "ContractExampleGen"
BEAM_CONFIGS = (("in_memory", 1), ("multi_processing", 2))


def _component(generator: str, data: str, range_bytes: int | None):
    from tfx import v1 as tfx

    from hap.components.contract_example_gen.component import ContractExampleGen

    if generator == CONTRACT_EXAMPLE_GEN:
        return ContractExampleGen(input_base=data, range_bytes=range_bytes)
    return tfx.components.CsvExampleGen(
        input_base=os.path.join(data, c.SAMPLES_DIR),
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="single_split", pattern="*.csv")]))


def _executor(generator: str, beam_args: list[str]):
    import apache_beam as beam
    from tfx.components.example_gen.csv_example_gen import executor as csv_executor
    from tfx.dsl.components.base import base_beam_executor

    from hap.components.contract_example_gen import executor as contract_executor

    executor_class = contract_executor.Executor if generator == CONTRACT_EXAMPLE_GEN else csv_executor.Executor
    # The pipeline is made here rather than from `beam_pipeline_args`, for which TFX would first
    # build an sdist of itself for remote workers, which a DirectRunner does not need.
    context = base_beam_executor.BaseBeamExecutor.Context(
        make_beam_pipeline_fn=lambda: beam.Pipeline(argv=beam_args))
    return executor_class(context)


def _example_count(uri: str) -> int:
    import tensorflow as tf

    files = tf.io.gfile.glob(os.path.join(uri, "Split-*", "*.gz"))
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP").reduce(0, lambda n, _: n + 1))


def measure(generator: str, mode: str, workers: int, range_bytes: int | None, data: str, out: str) -> dict:
    """Seconds of one ExampleGen's `Do` and the examples it wrote."""
    from tfx.types import standard_artifacts, standard_component_specs

    component = _component(generator, data, range_bytes)
    exec_properties = {k: v for k, v in component.exec_properties.items() if v is not None}
    examples = standard_artifacts.Examples()
    examples.uri = out
    executor = _executor(generator, [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"])
    start = time.perf_counter()
    executor.Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "examples": _example_count(out)}


def _measure_in_own_session(connection, *args) -> None:
    # Its own session, so that a timeout ends Beam's worker processes with it.
    os.setsid()
    try:
        connection.send(measure(*args))
    except Exception as e:  # noqa: BLE001 (reported in the table; the other runs go on)
        connection.send({"error": f"{type(e).__name__}: {e}".splitlines()[0]})


def measure_with_timeout(timeout: float, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_measure_in_own_session, args=(sender, *args))
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            os.killpg(process.pid, signal.SIGKILL)
            return {"error": f"timed out after {timeout:.0f}s"}
        return receiver.recv()
    except EOFError:
        return {"error": f"the run's process died (exit code {process.exitcode})"}
    finally:
        process.join()


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n:,} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="contract dataset with CSV samples")
    parser.add_argument("--out", required=True, help="an empty or new directory for every run's examples")
    parser.add_argument("--range-bytes", type=int, nargs="+", default=[reader.DEFAULT_RANGE_BYTES, 4 << 20],
                        help="ContractExampleGen's range sizes to run (default: its default and 4 MiB)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a run is ended")
    args = parser.parse_args()
    if any(b < 1 for b in args.range_bytes):
        parser.error("--range-bytes must be >= 1")
    if os.path.exists(args.out) and os.listdir(args.out):
        parser.error(f"--out {args.out} is not empty")
    fmt, files = reader.data_files(os.path.join(args.data, c.SAMPLES_DIR))
    if fmt != reader.CSV:
        parser.error(f"--data {args.data} holds {fmt} samples; CsvExampleGen reads CSV")

    runs = []
    for mode, workers in BEAM_CONFIGS:
        runs.append((CSV_EXAMPLE_GEN, mode, workers, None))
        runs += [(CONTRACT_EXAMPLE_GEN, mode, workers, range_bytes) for range_bytes in args.range_bytes]
    results = []
    for generator, mode, workers, range_bytes in runs:
        out = os.path.join(args.out, f"{generator}-{mode}-{workers}" + (f"-{range_bytes}" if range_bytes else ""))
        load = os.getloadavg()[0]
        result = measure_with_timeout(args.timeout, generator, mode, workers, range_bytes, args.data, out)
        print(f"{generator} {mode} x{workers}" + (f" ranges of {_size(range_bytes)}" if range_bytes else "")
              + f": {result}", flush=True)
        results.append((generator, mode, workers, range_bytes, load, result))

    baseline = {(mode, workers): result.get("seconds") for generator, mode, workers, _, _, result in results
                if generator == CSV_EXAMPLE_GEN}
    size = sum(os.path.getsize(p) for p in files)
    print(f"\n{len(files)} CSV files, {size / 1e6:.1f} MB\n")
    columns = ["ExampleGen", "Beam mode", "workers", "byte ranges", "examples", "seconds", "ratio to CsvExampleGen",
               "load avg (1 min) at start"]
    rows = []
    for generator, mode, workers, range_bytes, load, result in results:
        if range_bytes:
            count = sum(len(reader.file_ranges(p, range_bytes)) for p in files)
            ranges = f"{count} of ≤ {_size(range_bytes)}"
        else:
            ranges = f"{len(files)} (one per file)"
        if "error" in result:
            rows.append([generator, mode, workers, ranges, "", result["error"], "", f"{load:.2f}"])
            continue
        base = baseline[(mode, workers)]
        ratio = f"{result['seconds'] / base:.2f}" if base else ""
        rows.append([generator, mode, workers, ranges, f"{result['examples']:,}", f"{result['seconds']:.1f}", ratio,
                     f"{load:.2f}"])
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    write_result("example_gen", command_line(), table(columns, rows),
                 notes=f"{len(files)} CSV files, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
