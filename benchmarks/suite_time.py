"""How long the test suite takes, as `make test` and `make test-quick` run it:

    .venv/bin/python benchmarks/suite_time.py [--tier full|quick]

Runs the tier's pytest command (the Makefile's, read from it so the two cannot differ), times it
and writes results/suite_time_<tier>.json: the wall time, pytest's closing line and the ten
slowest tests. Run it with nothing else running: the load average at the start is recorded.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import ROOT, command_line, machine, write_result  # noqa: E402

TARGETS = {"full": "test", "quick": "test-quick"}


def pytest_command(target: str) -> list[str]:
    """The pytest command line of a Makefile target, as `make -n` prints it."""
    printed = subprocess.run(["make", "-n", "-o", "setup", target], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    (line,) = [line for line in printed if " -m pytest " in line]
    return [arg.strip('"') for arg in re.findall(r'"[^"]*"|\S+', line.replace("$(BIN)", ".venv/bin"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=sorted(TARGETS), default="full")
    parser.add_argument("--log", help="also write pytest's whole output here (a failure's traceback)")
    args = parser.parse_args()
    command = pytest_command(TARGETS[args.tier]) + ["--durations=10"]
    load = machine()["load"]
    print(f"running `{' '.join(command)}` (load average {load})", flush=True)
    start = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - start
    if args.log:
        with open(args.log, "w", encoding="utf-8") as f:
            f.write(done.stdout + done.stderr)
    lines = done.stdout.splitlines()
    closing = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ passed", line)), "")
    slowest = [line.split(None, 2) for line in lines if re.match(r"^\d+\.\d+s (call|setup|teardown) ", line)][:10]
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    print(f"{args.tier}: {seconds / 60:.1f} min, rc {done.returncode}: {closing}", *failed, sep="\n")
    write_result(f"suite_time_{args.tier}", command_line(), {
        "make target": f"make {TARGETS[args.tier]}", "minutes": round(seconds / 60, 1),
        "pytest's closing line": closing, "exit status": done.returncode},
        notes="; ".join(failed + ["slowest: " + "; ".join(f"{test} {s} ({phase})" for s, phase, test in slowest)]))
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
