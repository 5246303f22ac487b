"""Regenerates the result tables in README.md and docs/ from the result files.

A table in the docs is written between two markers, and only this script writes what is between
them:

    <!-- result: results/legacy/pipeline_scale.json -->
    (the table and the line saying which command, commit, machine and date it comes from)
    <!-- end result -->

    .venv/bin/python benchmarks/render_docs.py           # rewrite every generated table
    .venv/bin/python benchmarks/render_docs.py --check   # exit 1, naming each file, if any is stale

tests/test_docs_results.py runs the check.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

MARKER = re.compile(r"(<!-- result: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end result -->)", re.S)


def documents(root: str = results.ROOT) -> list[str]:
    paths = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "**", "*.md"),
                                                                 recursive=True))
    return [p for p in paths if os.path.exists(p)]


def render(text: str, root: str = results.ROOT) -> str:
    """`text` with every marked table regenerated from its result file (paths from `root`)."""
    def table(match: re.Match) -> str:
        path = os.path.join(root, match["path"])
        if not os.path.exists(path):
            raise FileNotFoundError(f"a result marker names {match['path']}, which does not exist")
        return match.group(1) + results.render_table(results.load(path)) + match.group(4)
    return MARKER.sub(table, text)


def stale(root: str = results.ROOT) -> list[str]:
    """The documents whose generated tables differ from what the result files give."""
    out = []
    for path in documents(root):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if render(text, root) != text:
            out.append(os.path.relpath(path, root))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    parser.add_argument("--root", default=results.ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        found = stale(args.root)
        for path in found:
            print(f"{path}: a generated table is stale; run .venv/bin/python benchmarks/render_docs.py")
        return 1 if found else 0
    for path in documents(args.root):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = render(text, args.root)
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"rewrote {os.path.relpath(path, args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
