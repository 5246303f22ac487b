"""The hybrid-sample dataset contract (v1), as code.

`../shared/specs/hybrid-dataset.md` is the reference; this module holds its constants and the
`features.yaml` model, so the simulator, the validator, the schema and the pipeline all read the
same definition.

Ids (`request_id`, `user_id`, `item_id`) and categorical values are kept as strings once read: the
contract allows int64 or string ids, and a string is the one type both fit losslessly.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import yaml

from hap import storage

FEATURES_FILE = "features.yaml"
SAMPLES_DIR = "samples"
FUNNEL_DIR = "funnel"

# Column kinds of the fixed columns.
ID, INT, STRING, FLOAT = "id", "int", "string", "float"

REQUIRED_COLUMNS: dict[str, str] = {
    "request_id": ID,
    "user_id": ID,
    "item_id": ID,
    "day": INT,
    "source": STRING,
    "click": INT,
    "content_type": STRING,
    "prerank_pos": INT,
    "rank_pos": INT,
    "expose_pos": INT,
}
LABEL_COLUMNS: dict[str, str] = {"like": INT, "comment": INT, "share": INT, "dwell_ms": INT}
BINARY_LABELS = ("click", "like", "comment", "share")
ORACLE_COLUMN = "oracle_utility"
POSITION_COLUMNS = ("prerank_pos", "rank_pos", "expose_pos")

EXPOSED, RANKING, PRERANKING, GLOBAL = "exposed", "ranking", "preranking", "global"
SOURCES = (EXPOSED, RANKING, PRERANKING, GLOBAL)
# Sampling cut-offs of the contract: RN are ranked below position 50 by ranking, PRN below 200
# by pre-ranking.
# The bound on a numeric value, in the raw units of its feature: |x| <= 1e18. A value beyond it
# is not a measurement but a corrupt one (an overflowed counter, a sentinel such as 1e30 or
# FLT_MAX): the reader refuses it in a dataset and the cascade graph and `hap serve` in a
# request, as they refuse an infinite one (serving/request.py `numeric_problem` has the reasons).
MAX_ABS_NUMERIC = 1e18
RANK_CUTOFF = 50
PRERANK_CUTOFF = 200

# Sample groups, from hardest to easiest negative; EP is the exposed positive.
EP, EN, RN, PRN, GN = "EP", "EN", "RN", "PRN", "GN"
SAMPLE_GROUPS = (EP, EN, RN, PRN, GN)
NEGATIVE_GROUPS = SAMPLE_GROUPS[1:]
# The group of a sample from a source other than EXPOSED, whose samples split by click into EP and EN.
GROUP_OF_SOURCE = {RANKING: RN, PRERANKING: PRN, GLOBAL: GN}

USER, CONTEXT, ITEM, CROSS = "user", "context", "item", "cross"
ROLES = (USER, CONTEXT, ITEM, CROSS)
CATEGORICAL, NUMERIC, SEQUENCE = "categorical", "numeric", "sequence"
KINDS = (CATEGORICAL, NUMERIC, SEQUENCE)
# Required columns that are features without being listed, with their fixed role.
IMPLICIT_FEATURES = {"user_id": USER, "item_id": ITEM, "content_type": ITEM}
_FEATURE_KEYS = {"name", "role", "kind", "max_len", "target"}


def sample_group(source: str, click: int) -> str:
    """The sample group (EP, EN, RN, PRN, GN) of a sample, from its source and click."""
    if source == EXPOSED:
        return EP if click else EN
    return GROUP_OF_SOURCE[source]


class ContractError(ValueError):
    """A dataset breaks the contract; `problems` lists every finding, one line each."""

    def __init__(self, problems: list[str] | str):
        # A str too: Beam re-raises a worker's exception as type(e)(message).
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    role: str
    kind: str
    max_len: int | None = None
    target: str | None = None

    def to_yaml_dict(self) -> dict:
        entry = {"name": self.name, "role": self.role, "kind": self.kind}
        if self.kind == SEQUENCE:
            entry["max_len"] = self.max_len
            if self.target:
                entry["target"] = self.target
        return entry


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """The features of a dataset: those listed in `features.yaml` plus the implicit ones."""

    features: tuple[Feature, ...]
    warnings: tuple[str, ...] = ()

    @property
    def listed(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.name not in IMPLICIT_FEATURES)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def column_kinds(self, funnel: bool = False) -> dict[str, str]:
        """Every column a dataset may have, mapped to its kind (a column kind or a feature kind)."""
        kinds = dict(REQUIRED_COLUMNS)
        kinds.update(LABEL_COLUMNS)
        for f in self.listed:
            kinds[f.name] = f.kind
        if funnel:
            kinds[ORACLE_COLUMN] = FLOAT
        return kinds


def _implicit() -> list[Feature]:
    return [Feature(name, role, CATEGORICAL) for name, role in IMPLICIT_FEATURES.items()]


def parse_features(doc: object, where: str) -> FeatureSet:
    """Checks a parsed `features.yaml` document; raises ContractError listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    if not isinstance(doc, dict):
        raise ContractError([f"{where}: expected a mapping with 'version' and 'features', got {type(doc).__name__}"])
    if doc.get("version") != 1:
        problems.append(f"{where}: 'version' must be 1, got {doc.get('version')!r}")
    for key in sorted(set(doc) - {"version", "features"}):
        warnings.append(f"{where}: unknown top-level key {key!r} ignored")
    entries = doc.get("features")
    if not isinstance(entries, list) or not entries:
        problems.append(f"{where}: 'features' must be a non-empty list")
        raise ContractError(problems)

    features: list[Feature] = []
    seen: set[str] = set()
    reserved = set(REQUIRED_COLUMNS) | set(LABEL_COLUMNS) | {ORACLE_COLUMN}
    for i, entry in enumerate(entries):
        at = f"{where}: features[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{at}: expected a mapping, got {entry!r}")
            continue
        name, role, kind = entry.get("name"), entry.get("role"), entry.get("kind")
        if isinstance(name, str) and name:
            at = f"{at} ({name})"
        else:
            problems.append(f"{at}: 'name' must be a non-empty string, got {name!r}")
            continue
        for key in sorted(set(entry) - _FEATURE_KEYS):
            warnings.append(f"{at}: unknown key {key!r} ignored")
        if name in seen:
            problems.append(f"{at}: duplicate feature name")
            continue
        seen.add(name)
        if role not in ROLES:
            problems.append(f"{at}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if kind not in KINDS:
            problems.append(f"{at}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if name in IMPLICIT_FEATURES:
            if role != IMPLICIT_FEATURES[name] or kind != CATEGORICAL:
                problems.append(
                    f"{at}: {name} is an implicit feature with role {IMPLICIT_FEATURES[name]} "
                    f"and kind categorical, got role {role!r}, kind {kind!r}")
            continue
        if name in reserved:
            problems.append(f"{at}: {name!r} is a contract column, not a feature")
            continue
        max_len, target = entry.get("max_len"), entry.get("target")
        if kind == SEQUENCE:
            if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
                problems.append(f"{at}: a sequence needs a positive integer 'max_len', got {max_len!r}")
            if target is not None and not isinstance(target, str):
                problems.append(f"{at}: 'target' must name a feature, got {target!r}")
        else:
            for key in ("max_len", "target"):
                if key in entry:
                    warnings.append(f"{at}: {key!r} only applies to sequences; ignored")
            max_len = target = None
        features.append(Feature(name, role, kind, max_len, target))

    by_name = {f.name: f for f in _implicit() + features}
    for f in features:
        if f.kind == SEQUENCE and f.target is not None:
            t = by_name.get(f.target)
            if t is None:
                problems.append(f"{where}: feature {f.name}: target {f.target!r} is not a feature")
            elif t.role != ITEM or t.kind != CATEGORICAL:
                problems.append(
                    f"{where}: feature {f.name}: target {f.target!r} must be a categorical item feature, "
                    f"is {t.kind} with role {t.role}")
    if problems:
        raise ContractError(problems)
    return FeatureSet(tuple(_implicit() + features), tuple(warnings))


def load_features(dataset_dir: str) -> FeatureSet:
    """Reads and checks `<dataset_dir>/features.yaml`."""
    path = storage.join(dataset_dir, FEATURES_FILE)
    if not storage.isfile(path):
        raise ContractError([f"{path}: missing; every dataset needs a features.yaml"])
    try:
        with storage.open(path) as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ContractError([f"{path}: not valid YAML: {e}"]) from None
    return parse_features(doc, path)


def dump_features(features: Iterable[Feature], header: str = "") -> str:
    """`features.yaml` text for the given listed features, one flow mapping per line."""
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()] if header else []
    lines += ["version: 1", "features:"]
    for f in features:
        body = yaml.safe_dump(f.to_yaml_dict(), default_flow_style=True, sort_keys=False, width=1000).strip()
        lines.append(f"  - {body}")
    return "\n".join(lines) + "\n"
