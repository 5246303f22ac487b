"""Checks a dataset against the hybrid-sample contract and reports every problem.

Each problem names the file, the row (CSV line, or TFRecord record number) and the column.
Rows are checked one at a time as they stream past, so memory stays flat however large the
dataset; only the per-check counts of problems are kept. A check that fires on many rows prints
its first `max_per_check` findings and a count of the rest, so a broken column in a billion-row
log gives a readable report rather than a billion lines.
"""
from __future__ import annotations

import collections
import dataclasses
import os

from hap.data import contract as c
from hap.data import reader


@dataclasses.dataclass
class Report:
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    rows: int = 0
    files: int = 0
    suppressed: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        hidden = sum(self.suppressed.values())
        more = f" ({hidden} more not shown)" if hidden else ""
        return (f"{self.rows} rows in {self.files} files: {len(self.errors) + hidden} errors{more}, "
                f"{len(self.warnings)} warnings")


class Validator:
    def __init__(self, rank_cutoff: int = c.RANK_CUTOFF, prerank_cutoff: int = c.PRERANK_CUTOFF,
                 max_per_check: int = 20):
        self.rank_cutoff = rank_cutoff
        self.prerank_cutoff = prerank_cutoff
        self.max_per_check = max_per_check

    def validate(self, dataset_dir: str) -> Report:
        report = Report()
        self._shown = collections.Counter()
        try:
            features = c.load_features(dataset_dir)
        except c.ContractError as e:
            report.errors += e.problems
            features = None
        else:
            report.warnings += features.warnings
        for part in (c.SAMPLES_DIR, c.FUNNEL_DIR):
            directory = os.path.join(dataset_dir, part)
            if part == c.FUNNEL_DIR and not os.path.exists(directory):
                continue
            try:
                _, files = reader.data_files(directory)
            except c.ContractError as e:
                report.errors += e.problems
                continue
            report.warnings += [f"{p}: not a data file; ignored" for p in reader.unknown_files(directory)]
            if features is None:
                continue  # Without a usable features.yaml, columns cannot be told apart.
            present: set[str] = set()
            for path in files:
                report.files += 1
                try:
                    present |= self._check_file(path, features, part == c.FUNNEL_DIR, report)
                except c.ContractError as e:  # an unreadable file: report it and go on
                    report.errors += e.problems
            if reader.file_format(files[0]) == reader.TFRECORD:
                # A tf.Example leaves out missing values, so only a feature absent from every
                # record is missing from the data. The few funnel requests may lack a feature
                # by chance; the training samples should not.
                findings = report.errors if part == c.SAMPLES_DIR else report.warnings
                for f in features.listed:
                    if f.name not in present:
                        findings.append(f"{directory}: feature {f.name!r} is in features.yaml but in no record")
        return report

    def _error(self, report: Report, check: str, message: str) -> None:
        if self._shown[check] < self.max_per_check:
            self._shown[check] += 1
            report.errors.append(message)
        else:
            report.suppressed[check] += 1

    def _check_file(self, path: str, features: c.FeatureSet, funnel: bool, report: Report) -> set[str]:
        """Checks one file; returns the columns it holds."""
        kinds = features.column_kinds(funnel=funnel)
        required = dict(c.REQUIRED_COLUMNS)
        if funnel:
            required[c.ORACLE_COLUMN] = c.FLOAT
        expected = set(kinds)
        is_csv = reader.file_format(path) == reader.CSV
        if is_csv:
            header = reader.csv_header(path)
            if not header:
                report.errors.append(f"{path}: empty file, no header")
                return set()
            for column in required:
                if column not in header:
                    report.errors.append(f"{path}: missing required column {column!r}")
            for f in features.listed:
                if f.name not in header:
                    report.errors.append(f"{path}: feature {f.name!r} is in features.yaml but not in the data")
            for column in header:
                if column not in expected:
                    report.errors.append(
                        f"{path}: column {column!r} is in the data but not in features.yaml "
                        "(nor a contract column)")
            duplicates = sorted({h for h in header if header.count(h) > 1})
            for column in duplicates:
                report.errors.append(f"{path}: column {column!r} appears more than once in the header")
            if any(col not in header for col in required):
                return set(header)  # Every row would repeat the same finding.
        present: set[str] = set(header) if is_csv else set()
        unknown_reported: set[str] = set()
        for raw in reader.iter_raw(path):
            report.rows += 1
            if not is_csv:
                present.update(raw.values)
                for column in required:
                    if column not in raw.values:
                        self._error(report, f"{path}:missing:{column}",
                                    f"{raw.location}: missing required column {column!r}")
                for column in raw.values.keys() - expected - unknown_reported:
                    unknown_reported.add(column)
                    report.errors.append(
                        f"{path}: feature {column!r} is in the data but not in features.yaml "
                        "(nor a contract column)")
            row, problems = reader.parse_row(raw, kinds)
            for column, message in problems:
                self._error(report, f"{path}:parse:{column}", message)
            for check, message in self._row_problems(row, funnel):
                self._error(report, f"{path}:{check}", f"{raw.location}: {message}")
        return present

    def _row_problems(self, row: dict, funnel: bool):
        source = row.get("source")
        if source is not None and source not in c.SOURCES:
            yield "source", f"column 'source': unknown source {source!r} (expected one of {', '.join(c.SOURCES)})"
            source = None
        if funnel and source == c.GLOBAL:
            yield "source", "column 'source': funnel rows come from retrieval; 'global' is not a funnel source"
        for label in c.BINARY_LABELS:
            if label in row and row[label] not in (0, 1):
                yield label, f"column {label!r}: must be 0 or 1, got {row[label]}"
        if source not in (None, c.EXPOSED) and row.get("click") == 1:
            yield "click", f"column 'click': click = 1 on a {source} sample; only exposed samples can be clicked"
        if row.get("day", 0) < 0:
            yield "day", f"column 'day': must be >= 0, got {row['day']}"
        if row.get("dwell_ms", 0) < 0:
            yield "dwell_ms", f"column 'dwell_ms': must be >= 0, got {row['dwell_ms']}"
        if row.get("content_type") == "":
            yield "content_type", "column 'content_type': empty"
        positions = {p: row[p] for p in c.POSITION_COLUMNS if p in row}
        for p, v in positions.items():
            if v < -1:
                yield p, f"column {p!r}: positions are >= -1 (-1 = not reached), got {v}"
        if source is not None and len(positions) == 3:
            for p, message in self._position_rules(source, positions, funnel):
                yield p, f"column {p!r}: {message}"

    def _position_rules(self, source: str, pos: dict, funnel: bool):
        pre, rank, exp = pos["prerank_pos"], pos["rank_pos"], pos["expose_pos"]
        if source == c.EXPOSED:
            if exp < 0:
                yield "expose_pos", f"an exposed sample needs expose_pos >= 0, got {exp}"
            return
        if exp != -1:
            yield "expose_pos", f"a {source} sample was not exposed: expose_pos must be -1, got {exp}"
        if source == c.RANKING:
            floor = 0 if funnel else self.rank_cutoff
            if rank < floor:
                yield "rank_pos", (f"a ranking negative is ranked at or below position {floor} by ranking: "
                                   f"rank_pos must be >= {floor}, got {rank}")
        elif source == c.PRERANKING:
            floor = 0 if funnel else self.prerank_cutoff
            if rank != -1:
                yield "rank_pos", f"a pre-ranking negative never reached ranking: rank_pos must be -1, got {rank}"
            if pre < floor:
                yield "prerank_pos", (f"a pre-ranking negative is ranked at or below position {floor} by "
                                      f"pre-ranking: prerank_pos must be >= {floor}, got {pre}")


def validate(dataset_dir: str, **kwargs) -> Report:
    return Validator(**kwargs).validate(dataset_dir)
