"""Benchmark results as files: each script writes what it prints to results/<name>.json, and the
docs' tables are generated from those files (benchmarks/render_docs.py), never pasted by hand.

A result file holds the command that produced it, the commit it ran at, the machine (cores and
load average: on a shared machine the load is what makes two timings comparable or not), the
date, and either a table ({"columns": [...], "rows": [[...], ...]}) or a mapping of numbers.
Results that can no longer be regenerated (the code or the machine has moved on) live under
results/legacy/ with the commit they were measured at.

    from results import table, write_result       # benchmarks/ is on sys.path when a script runs
    write_result("record_building", command_line(), table(["form", "seconds"], rows))
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "results")
REQUIRED = ("command", "commit", "machine", "date")


def table(columns: list, rows: list) -> dict:
    """A table as result files hold it; cells are kept as given (numbers, or text as printed)."""
    columns = list(columns)
    rows = [list(row) for row in rows]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} cells for {len(columns)} columns: {row!r}")
    return {"columns": columns, "rows": rows}


def from_markdown(text: str) -> dict:
    """The first markdown table in `text` (as a script prints it) as a `table`; bold marks dropped."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append([cell.strip().replace("**", "") for cell in line.strip("|").split("|")])
    return table(block[0], [row for row in block[2:]])


def is_table(value) -> bool:
    return isinstance(value, dict) and set(value) == {"columns", "rows"}


def command_line(argv: list[str] | None = None) -> str:
    """The running script's command line as a user would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.relpath(os.path.abspath(argv[0]), ROOT) if argv else ""
    return shlex.join([".venv/bin/python", script] + argv[1:])


def commit() -> str:
    """The checked-out commit, marked "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> dict:
    return {"cores": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}


def write_result(name: str, command: str, numbers_or_table, notes: str | None = None,
                 results_dir: str | None = None) -> str:
    """Writes results/<name>.json (atomically: a temporary file, then os.replace) and returns its
    path. `numbers_or_table` is a `table(...)` or a JSON-serialisable mapping of numbers."""
    result = {"command": command, "commit": commit(), "machine": machine(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    result["table" if is_table(numbers_or_table) else "numbers"] = numbers_or_table
    if notes:
        result["notes"] = notes
    path = os.path.join(results_dir or RESULTS_DIR, f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(name)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(f"result: {os.path.relpath(path, ROOT)}", flush=True)
    return path


def load(path: str) -> dict:
    with open(path if os.path.isabs(path) else os.path.join(ROOT, path), encoding="utf-8") as f:
        return json.load(f)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _flatten(numbers, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(numbers, dict):
        return [item for key, value in numbers.items() for item in _flatten(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), numbers)]


def _machine_text(machine) -> str:
    if not isinstance(machine, dict):
        return str(machine)
    description = machine.get("description") or ""
    parts = [description] if "core" in description else [f"{machine.get('cores')} cores", description]
    load = machine.get("load")
    if isinstance(load, list):
        parts.append("load " + " / ".join(f"{x:g}" for x in load))
    elif load:
        parts.append(f"load {load}")
    return "; ".join(p for p in parts if p)


def provenance(result: dict) -> str:
    """One line: where a result's numbers come from."""
    date = str(result["date"])[:10]
    commit = str(result["commit"])
    commit = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
    return (f"`{result['command']}` at {commit}, {date}, "
            f"{_machine_text(result['machine'])}.")


def render_table(result: dict) -> str:
    """A result as markdown: its table (or its numbers as a key/value table) and where it comes from."""
    if "table" in result:
        columns, rows = result["table"]["columns"], result["table"]["rows"]
    else:
        columns, rows = ["measure", "value"], [list(item) for item in _flatten(result.get("numbers", {}))]
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + provenance(result) + "\n"
