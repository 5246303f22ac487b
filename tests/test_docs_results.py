"""The docs' numbers come from result files: every generated table is what its result file gives
(benchmarks/render_docs.py --check), and every result file says which command, commit, machine
and date its numbers come from."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def _load(name: str):
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)  # render_docs imports its sibling `results`
    spec = importlib.util.spec_from_file_location(f"_hap_benchmarks_{name}", os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_docs = _load("render_docs")
results = _load("results")
RESULT_FILES = sorted(glob.glob(os.path.join(ROOT, "results", "**", "*.json"), recursive=True))


def test_every_generated_table_is_current():
    stale = render_docs.stale(ROOT)
    assert not stale, (f"generated tables out of date in {stale}: run .venv/bin/python benchmarks/render_docs.py "
                       "(and commit the result files it reads)")


def test_the_docs_have_generated_tables():
    marked = [path for path in render_docs.documents(ROOT)
              if render_docs.MARKER.search(open(path, encoding="utf-8").read())]
    assert os.path.join(ROOT, "README.md") in marked
    assert len(marked) > 5


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_result_file_says_where_its_numbers_come_from(path):
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    for key in results.REQUIRED:
        assert result.get(key), f"{os.path.relpath(path, ROOT)} has no {key!r}"
    assert ("table" in result) != ("numbers" in result), "a result holds a table or numbers"
    if "table" in result:
        columns, rows = result["table"]["columns"], result["table"]["rows"]
        assert rows and all(len(row) == len(columns) for row in rows)
    if "/legacy/" in path.replace(os.sep, "/"):
        assert result.get("source"), "a legacy result says where it was copied from"


def test_a_stale_table_is_found_and_rewritten(tmp_path):
    os.makedirs(tmp_path / "results")
    os.makedirs(tmp_path / "docs")
    results.write_result("x", "python x.py", results.table(["a", "b"], [["1", 2.5]]),
                         results_dir=str(tmp_path / "results"))
    doc = tmp_path / "docs" / "guide.md"
    doc.write_text("before\n<!-- result: results/x.json -->\n| old |\n<!-- end result -->\nafter\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("no tables\n", encoding="utf-8")
    assert render_docs.stale(str(tmp_path)) == [os.path.join("docs", "guide.md")]
    assert render_docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert render_docs.main(["--root", str(tmp_path)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert "| a | b |\n|---|---|\n| 1 | 2.5 |\n" in text and "`python x.py` at " in text
    assert text.startswith("before\n") and text.endswith("<!-- end result -->\nafter\n")
    assert render_docs.main(["--check", "--root", str(tmp_path)]) == 0


def test_a_marker_without_its_result_file_fails(tmp_path):
    (tmp_path / "README.md").write_text("<!-- result: results/missing.json -->\n<!-- end result -->\n",
                                        encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="results/missing.json"):
        render_docs.stale(str(tmp_path))
