"""`HapSettings`: the one settings tree every front end builds the pipeline from.

Defaults live in hap/defaults.yaml and nowhere else. `load()` applies, in this order, a settings
file (`--config FILE`; HAP_CONFIG in the environment), the environment's HAP_SET (key=value pairs,
split like a shell line) and `--set key=value` options, and records where each value came from
(`hap config show`). Every key, type and value is checked before any component runs; a bad one is
a `SettingsError` naming the key, the value and what is allowed.

Custom components receive their subtree as one JSON execution property and parse it with the same
class (`tree.parse`); the pushed cascade records the whole tree (components/cascade_assembler).

    python -m hap.settings --reference   # writes docs/settings.md from the tree and defaults.yaml
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shlex
import sys
import typing

import yaml

from hap.data.sample_routing import MODELS
from hap.models.trainer_settings import TrainerSettings, TuningSettings
from hap.serving.policy import CascadeSettings
from hap.tree import (SettingsError, defaults_from, defaults_tree, fields_of, key_comments, parse, to_plain,
                      type_text, unknown_key_error)

DRIFT_COMPARATORS = ("infinity_norm", "jensen_shannon_divergence")
METADATA_BACKENDS = ("sqlite", "mysql")
DEFAULT, ENVIRONMENT = "default", "environment"


@dataclasses.dataclass(frozen=True)
@defaults_from("data")
class DataSettings:
    eval_days: int
    window_days: int | None
    range_bytes: int | None
    vocab_top_k: int

    def __post_init__(self):
        for name in ("eval_days", "window_days", "range_bytes", "vocab_top_k"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DriftComparator:
    comparator: str
    threshold: float

    def __post_init__(self):
        if self.comparator not in DRIFT_COMPARATORS:
            raise ValueError(f"comparator must be one of {DRIFT_COMPARATORS}, got {self.comparator!r}")
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be a number >= 0, got {self.threshold!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("drift")
class DriftSettings:
    check: bool
    accept: bool
    comparators: dict[str, DriftComparator]


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """One model's Trainer settings and its Evaluator's per-contrast AUC floors."""

    trainer: TrainerSettings
    auc_floors: dict[str, float]

    def __post_init__(self):
        contrasts = set(self.trainer.routing.contrasts)
        if set(self.auc_floors) != contrasts:
            raise ValueError(f"auc_floors needs one floor for each contrast of the {self.trainer.model} model, "
                             f"{sorted(contrasts)}; got {sorted(self.auc_floors)}")
        for source, floor in self.auc_floors.items():
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"auc_floors.{source} must be a number in [0, 1], got {floor!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("evaluator")
class EvaluatorSettings:
    auc_tolerance: float

    def __post_init__(self):
        if not self.auc_tolerance >= 0:
            raise ValueError(f"auc_tolerance must be a number >= 0, got {self.auc_tolerance!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("beam")
class BeamSettings:
    args: list[str]
    component_args: dict[str, list[str]] | None
    multi_process_min_bytes: int
    multi_process_components: list[str]
    multi_process_args: list[str]

    def component_args_for(self, sample_bytes: int) -> dict[str, list[str]]:
        """`component_args`, or where it is null the measured choice for a dataset of
        `sample_bytes` (docs/decisions/0006-beam-processes.md), unless `args` were changed from
        the default: then they are the user's choice for every component."""
        if self.component_args is not None:
            return self.component_args
        if self.args != BeamSettings().args or sample_bytes < self.multi_process_min_bytes:
            return {}
        return {component: list(self.multi_process_args) for component in self.multi_process_components}


@dataclasses.dataclass(frozen=True)
@defaults_from("metadata.mysql")
class MySQLSettings:
    host: str
    port: int
    database: str
    user: str
    password_env: str


@dataclasses.dataclass(frozen=True)
@defaults_from("metadata")
class MetadataSettings:
    backend: str
    mysql: MySQLSettings

    def __post_init__(self):
        if self.backend not in METADATA_BACKENDS:
            raise ValueError(f"backend must be one of {METADATA_BACKENDS}, got {self.backend!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("storage")
class StorageSettings:
    artifacts_root: str | None


@dataclasses.dataclass(frozen=True)
@defaults_from("retention")
class RetentionSettings:
    keep_runs: int | None

    def __post_init__(self):
        if self.keep_runs is not None and self.keep_runs < 1:
            raise ValueError(f"keep_runs must be an integer >= 1 or null, got {self.keep_runs!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("serving")
class ServingSettings:
    model_name: str
    host: str
    port: int
    rest_api_port: int
    file_system_poll_wait_seconds: float
    max_message_mb: int
    drain_seconds: float

    def __post_init__(self):
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"model_name must be a non-empty name without '/', got {self.model_name!r}")
        for name in ("port", "rest_api_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be a port number (0-65535), got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("evaluation")
class EvaluationSettings:
    ks: list[int]

    def __post_init__(self):
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be integers >= 1, got {self.ks!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("benchmark")
class BenchmarkSettings:
    seeds: list[int]
    route_fractions: list[float]
    latency_requests: int

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if not all(0 < f <= 1 for f in self.route_fractions):
            raise ValueError(f"route_fractions must be in (0, 1], got {self.route_fractions!r}")


@dataclasses.dataclass(frozen=True)
@defaults_from("airflow")
class AirflowSettings:
    schedule: str | None
    retries: int
    retry_delay_s: int

    def __post_init__(self):
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.retry_delay_s < 0:
            raise ValueError(f"retry_delay_s must be >= 0 seconds, got {self.retry_delay_s}")


@dataclasses.dataclass(frozen=True)
@defaults_from("kubeflow")
class KubeflowSettings:
    beam_args: list[str]
    gpu_type: str
    gpus: int

    def __post_init__(self):
        if self.gpus < 1:
            raise ValueError(f"gpus must be at least one GPU per Trainer, got {self.gpus}")


@dataclasses.dataclass(frozen=True)
@defaults_from("")
class HapSettings:
    pipeline_name: str
    warm_start: bool
    enable_cache: bool
    data: DataSettings
    drift: DriftSettings
    light: ModelSettings
    heavy: ModelSettings
    tuning: TuningSettings
    evaluator: EvaluatorSettings
    cascade: CascadeSettings
    beam: BeamSettings
    metadata: MetadataSettings
    storage: StorageSettings
    retention: RetentionSettings
    serving: ServingSettings
    evaluation: EvaluationSettings
    benchmark: BenchmarkSettings
    airflow: AirflowSettings
    kubeflow: KubeflowSettings

    def __post_init__(self):
        for model in MODELS:
            if getattr(self, model).trainer.model != model:
                raise ValueError(f"{model}.trainer.model must be {model!r}, got {getattr(self, model).trainer.model!r}")

    def model(self, model: str) -> ModelSettings:
        return getattr(self, model)

    def to_json(self) -> str:
        return json.dumps(to_plain(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HapSettings":
        return parse(cls, json.loads(text))


def defaults() -> HapSettings:
    return HapSettings()


# ---- loading, with where each value came from -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Loaded:
    settings: HapSettings
    sources: dict[str, str]  # dotted key -> "file PATH", "--set", "environment (HAP_SET)"; absent: default

    def source_of(self, key: str) -> str:
        """Where the value of `key` came from: the latest source of it or of any key under it."""
        touched = [src for k, src in self.sources.items() if k == key or k.startswith(key + ".")]
        return touched[-1] if touched else DEFAULT


def _field_type(cls, name: str):
    return fields_of(cls)[name]


def _check_key(key: str) -> None:
    """A SettingsError for a key that is not in the tree, naming the nearest valid ones."""
    cls, path = HapSettings, []
    for part in key.split("."):
        if cls is None:
            return  # inside a free-form mapping (model_config, comparators' features): the value's check
        kinds = fields_of(cls)
        if part not in kinds:
            prefix = ".".join(path)
            raise unknown_key_error(key, [f"{prefix}.{k}" if prefix else k for k in kinds]
                                    + [k for k in all_keys() if k.endswith("." + part)])
        path.append(part)
        kind = kinds[part]
        cls = kind if dataclasses.is_dataclass(kind) else None


def all_keys() -> list[str]:
    """Every leaf key of the tree (mappings of the user's names count as one leaf)."""
    keys = []

    def walk(cls, prefix):
        for name, kind in fields_of(cls).items():
            key = f"{prefix}{name}"
            if dataclasses.is_dataclass(kind):
                walk(kind, key + ".")
            else:
                keys.append(key)

    walk(HapSettings, "")
    return keys


def _merge(base: dict, override: dict, source: str, sources: dict, prefix: str = "") -> None:
    """`override` into `base`: mappings merge key by key, except that an empty mapping replaces
    (`model_config: {}`, `comparators: {}`); every other value replaces."""
    for key, value in override.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and isinstance(base.get(key), dict):
            _merge(base[key], value, source, sources, path + ".")
        else:
            base[key] = value
            sources[path] = source


def _set_pair(pair: str, where: str) -> tuple[str, object]:
    key, sep, raw = pair.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SettingsError(f"{where}: {pair!r} is not KEY=VALUE (e.g. cascade.routing.fraction=0.3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SettingsError(f"{where}: the value of {key} is not a YAML value: {raw!r} ({e})") from None
    return key, value


def _nested(key: str, value) -> dict:
    node = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def read_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise SettingsError(f"settings file {path}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise SettingsError(f"settings file {path}: not YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _check_keys(data: dict, where: str, prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        try:
            _check_key(path)
        except SettingsError as e:
            raise SettingsError(f"{where}: {e}") from None
        if isinstance(value, dict) and value and _is_settings_node(path):
            _check_keys(value, where, path + ".")


def _is_settings_node(key: str) -> bool:
    cls = HapSettings
    for part in key.split("."):
        kind = fields_of(cls)[part]
        if not dataclasses.is_dataclass(kind):
            return False
        cls = kind
    return True


def load(config_file: str | None = None, sets: typing.Sequence[str] = (), env: typing.Mapping[str, str] | None = None,
         options: typing.Sequence[tuple[str, object, str]] = ()) -> Loaded:
    """The effective settings: hap/defaults.yaml, then the environment's HAP_CONFIG file unless
    `config_file` is given, `config_file`, HAP_SET, a command's own `options` ((key, value,
    the option's name), e.g. `hap run --window-days`), and `sets` (KEY=VALUE)."""
    env = os.environ if env is None else env
    tree, sources = copy.deepcopy(defaults_tree()), {}
    layers = []
    env_file = env.get("HAP_CONFIG", "").strip()
    if config_file:
        layers.append((read_file(config_file), f"file {config_file}"))
    elif env_file:
        try:
            layers.append((read_file(env_file), f"{ENVIRONMENT} (HAP_CONFIG={env_file})"))
        except SettingsError as e:
            raise SettingsError(f"HAP_CONFIG: {e}") from None
    for pair in shlex.split(env.get("HAP_SET", "")):
        key, value = _set_pair(pair, "HAP_SET")
        layers.append((_nested(key, value), f"{ENVIRONMENT} (HAP_SET)"))
    for key, value, option in options:
        layers.append((_nested(key, value), option))
    for pair in sets:
        key, value = _set_pair(pair, "--set")
        layers.append((_nested(key, value), "--set"))
    for data, source in layers:
        _check_keys(data, source)
        _merge(tree, data, source, sources)
    try:
        return Loaded(parse(HapSettings, tree), sources)
    except SettingsError as e:
        # Name where the refused value came from: "setting KEY: ..." starts every such message.
        key = str(e).removeprefix("setting ").split(":", 1)[0].split("[", 1)[0]
        source = Loaded(None, sources).source_of(key)
        raise SettingsError(f"{e} (from {source})" if source != DEFAULT else str(e)) from None


def override(settings: HapSettings, values: dict[str, object]) -> HapSettings:
    """`settings` with some dotted keys replaced, e.g. {"light.trainer.max_epochs": 2}; checked
    as `load` checks them."""
    tree = to_plain(settings)
    for key, value in values.items():
        _check_key(key)
        _merge(tree, _nested(key, value), "override", {})
    return parse(HapSettings, tree)


# ---- showing and documenting ------------------------------------------------------------------

def _leaves(settings) -> list[tuple[str, object]]:
    plain = to_plain(settings)
    out = []

    def walk(node, cls, prefix):
        for name, kind in fields_of(cls).items():
            key = f"{prefix}{name}"
            if dataclasses.is_dataclass(kind):
                walk(node[name], kind, key + ".")
            else:
                out.append((key, node[name]))

    walk(plain, HapSettings, "")
    return out


def show_lines(loaded: Loaded) -> list[str]:
    """`hap config show`: one line per key, `key: value  # source`, value as YAML flow."""
    rows = [(key, yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n..."),
             loaded.source_of(key)) for key, value in _leaves(loaded.settings)]
    width = min(max(len(k) + len(v) for k, v, _ in rows) + 3, 60)
    return [f"{k}: {v}".ljust(width) + f"  # {src}" for k, v, src in rows]


REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "settings.md")


def reference_markdown() -> str:
    """docs/settings.md: every key with its type, default and meaning (defaults.yaml's comments)."""
    comments = key_comments()
    lines = ["# Settings reference", "",
             "Generated from hap/defaults.yaml and the settings classes by `python -m hap.settings --reference`;",
             "tests/test_settings.py fails when it is stale. Set a key with `--set KEY=VALUE` or in a",
             "settings file (`--config FILE`, the same tree as hap/defaults.yaml); `hap config show` prints",
             "the effective values and where each came from.", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    kinds = {}

    def walk(cls, prefix):
        for name, kind in fields_of(cls).items():
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{name}.")
            else:
                kinds[f"{prefix}{name}"] = kind

    walk(HapSettings, "")
    for key, value in _leaves(defaults()):
        # The heavy model's keys not written out in the file share the light model's (YAML merge).
        meaning = comments.get(key) or (comments.get("light." + key.split(".", 1)[1], "")
                                        if key.startswith("heavy.") else "")
        shown = json.dumps(value).replace("|", "\\|")
        lines.append(f"| `{key}` | {type_text(kinds[key], plain=True)} | `{shown}` | {meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--reference"]:
        print("usage: python -m hap.settings --reference", file=sys.stderr)
        return 2
    tmp = REFERENCE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(reference_markdown())
    os.replace(tmp, REFERENCE)
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    from hap.settings import main as module_main  # the module's own classes, not __main__'s copies

    sys.exit(module_main())
