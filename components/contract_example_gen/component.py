"""ContractExampleGen: a FileBasedExampleGen whose input is a hybrid-sample contract dataset.

Being a FileBasedExampleGen keeps TFX's input fingerprinting, so a re-run over unchanged files
is served from cache.
"""
from __future__ import annotations

from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from hap.components.contract_example_gen import executor
from hap.data import contract as c


class ContractExampleGen(FileBasedExampleGen):
    """Canonical tf.Examples of `<input_base>/samples/`, split into train and the last
    `eval_days` days as eval; with `window_days`, train holds only the `window_days` days before
    the eval days (default: every earlier day). The output's span is the newest day. Plain CSV
    files are read in byte ranges of `range_bytes` by different workers (default:
    reader.DEFAULT_RANGE_BYTES, 64 MiB)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, input_base: str, eval_days: int = 1, range_bytes: int | None = None,
                 window_days: int | None = None):
        if eval_days < 1:
            raise ValueError(f"eval_days must be >= 1, got {eval_days}")
        if range_bytes is not None and range_bytes < 1:
            raise ValueError(f"range_bytes must be >= 1, got {range_bytes}")
        if window_days is not None and (isinstance(window_days, bool) or not isinstance(window_days, int)
                                        or window_days < 1):
            raise ValueError(f"window_days must be an integer >= 1 (days of training data), got {window_days!r}")
        pattern = f"{c.SAMPLES_DIR}/*"
        super().__init__(
            input_base=input_base,
            input_config=example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name=executor.TRAIN, pattern=pattern),
                example_gen_pb2.Input.Split(name=executor.EVAL, pattern=pattern),
            ]),
            custom_config=executor.custom_config_proto(eval_days, range_bytes, window_days),
        )
