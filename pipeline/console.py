"""What a person sees of `hap run` and `hap demo`: one line per pipeline component, a closing
summary, and nothing else. Everything else the process writes goes to the run's log file,
OUT/logs/run.log.

A TFX run prints a lot that says nothing about the user's pipeline: FutureWarnings of the Google
client libraries TFX imports, CUDA factory-registration errors and other C++ log lines of
TensorFlow, deprecation notices, TFMA and Beam warnings, Keras' per-epoch lines, absl INFO.
TensorFlow's C++ logging and Beam's worker processes write to file descriptor 2 directly, so
replacing `sys.stderr` would not catch them: `quiet_console` points descriptors 1 and 2 at the
log file for as long as it lasts, and writes our own lines to duplicates of the original ones.
Python's logging goes to the log file too, with timestamps; ERROR records (ours, or a library's)
are also shown on the console, and a component that fails is named there with its traceback.

The component lines follow TFX's LocalDagRunner through the records it logs around each launch
(tfx/orchestration/local/local_dag_runner.py: "Component %s is running." and "... is finished.";
tfx/orchestration/portable/launcher.py: "A cached execution %d is used." when its cache serves
it; "[%s] Input resolution error: %s", logged at ERROR with a traceback when TFX finds no
artifact for an input, e.g. a resolver of the previous run's output on a first run, after which
the run goes on: the line says "no input" and the traceback stays in the log). The records are
matched by their format string and read through their arguments, not by parsing text.

This module imports no TensorFlow: `hap tensorboard` uses its layout functions.
"""
from __future__ import annotations

import contextlib
import logging
import json
import os
import sys
import time
import traceback

from hap import storage
from hap.data.sample_routing import MODELS

LOG_DIR, LOG_FILE = "logs", "run.log"
MODEL_NAME = "hap"  # create_pipeline's default model_name: the Pusher's OUT/serving/<name>


# ---------------------------------------------------------------------------------------------
# The layout of a run directory (pipeline/local_runner.py documents the whole of it)


def log_path(out_dir: str) -> str:
    return os.path.join(out_dir, LOG_DIR, LOG_FILE)


# Where a run directory's artifacts live when `storage.artifacts_root` put them elsewhere.
ARTIFACTS_FILE = "artifacts.json"


def record_artifacts_root(out_dir: str, root: str) -> None:
    """Notes in the run directory where its artifacts and pushed models are, so that the summary,
    `hap serve` hints and TensorBoard find them; nothing when they are in the run directory."""
    path = os.path.join(out_dir, ARTIFACTS_FILE)
    if os.path.abspath(root) == os.path.abspath(out_dir):
        if os.path.exists(path):
            os.remove(path)
        return
    storage.write_text(path, json.dumps({"artifacts_root": root}))


def artifacts_root(out_dir: str) -> str:
    path = os.path.join(out_dir, ARTIFACTS_FILE)
    return json.loads(storage.read_text(path))["artifacts_root"] if os.path.isfile(path) else out_dir


def serving_base(out_dir: str) -> str:
    """The TF Serving model base path the Pusher writes versions to."""
    return storage.join(artifacts_root(out_dir), "serving", MODEL_NAME)


def tensorboard_logdirs(out_dir: str) -> dict[str, str]:
    root = storage.join(artifacts_root(out_dir), "pipeline_root")
    return {model: storage.join(root, f"Trainer_{model}", "model_run") for model in MODELS}


# ---------------------------------------------------------------------------------------------
# The console


class Console:
    """Our lines on the terminal (`out`, `err`), each also written to the log (`log`) with a
    timestamp so the log can be read alongside them."""

    def __init__(self, out, err, log=None):
        self.out, self.err, self.log = out, err, log
        self._open = None  # the component line begun and not yet finished: (text, start time)
        self.components: list[dict] = []  # every component this run launched, in order

    def _mirror(self, text: str) -> None:
        if self.log is not None:
            self.log.write(f"{time.strftime('%H:%M:%S')} [hap console] {text}\n")
            self.log.flush()

    def _close_open_line(self) -> None:
        if self._open is not None:
            self.out.write("\n")
            self.out.flush()
            self._open = None

    def line(self, text: str = "") -> None:
        self._close_open_line()
        self.out.write(text + "\n")
        self.out.flush()
        self._mirror(text)

    def error(self, text: str) -> None:
        self._close_open_line()
        self.err.write(text if text.endswith("\n") else text + "\n")
        self.err.flush()
        self._mirror(text)

    # A line begun when a step starts and ended when it ends, e.g. one per component.

    def begin(self, head: str) -> None:
        self._close_open_line()
        self.out.write(head)
        self.out.flush()
        self._open = head
        self._mirror(f"{head.strip()} ...")

    def end(self, head: str, status: str) -> None:
        """Ends the line `head` began; repeats `head` when something was written in between."""
        self.out.write((status if self._open == head else f"{head}{status}") + "\n")
        self.out.flush()
        self._open = None
        self._mirror(f"{head.strip()} {status}")

    @staticmethod
    def head(label: str, index: int | None = None, total: int | None = None) -> str:
        counter = f"[{index:>{len(str(total))}}/{total}]" if index else ""
        return f"{counter:>7} {label:<26} "

    def component_started(self, node: str, index: int, total: int) -> None:
        head = self.head(node, index, total)
        self.components.append({"node": node, "head": head, "state": "running", "start": time.monotonic(),
                                "seconds": None})
        self.begin(head)

    def component_cached(self, node: str) -> None:
        if self.components and self.components[-1]["node"] == node:
            self.components[-1]["state"] = "cached"

    def component_unresolved(self, node: str) -> None:
        """TFX found no artifact for an input of the component (e.g. a resolver of the previous
        run's output on a first run): it records the execution as failed and goes on."""
        if self.components and self.components[-1]["node"] == node:
            self.components[-1]["state"] = "no input"

    def component_finished(self, node: str, failed: bool = False) -> None:
        if not self.components or self.components[-1]["node"] != node:
            return
        entry = self.components[-1]
        entry["seconds"] = time.monotonic() - entry["start"]
        entry["state"] = "FAILED" if failed else (entry["state"] if entry["state"] in ("cached", "no input")
                                                  else "done")
        self.end(entry["head"], f"{entry['state']:<8}{entry['seconds']:6.1f} s")

    def running_component(self) -> str | None:
        """The component launched and not finished, if any (the one that failed)."""
        if self.components and self.components[-1]["seconds"] is None:
            return self.components[-1]["node"]
        return None

    @contextlib.contextmanager
    def step(self, label: str):
        """One line for a step of our own: its label, then done and its time."""
        head, start = self.head(label), time.monotonic()
        self.begin(head)
        try:
            yield
        except BaseException:
            self.end(head, f"{'FAILED':<8}{time.monotonic() - start:6.1f} s")
            raise
        self.end(head, f"{'done':<8}{time.monotonic() - start:6.1f} s")


class ComponentProgress(logging.Handler):
    """Turns LocalDagRunner's records around each component launch into console lines."""

    RUNNING, FINISHED = "Component %s is running.", "Component %s is finished."
    CACHED = "A cached execution %d is used."
    # tfx/orchestration/portable/launcher.py and resolver_node_handler.py, at ERROR with the
    # traceback; the run goes on. The console says "no input" on the component's line instead.
    UNRESOLVED = "[%s] Input resolution error: %s"

    def __init__(self, console: Console, total: int):
        super().__init__(logging.INFO)
        self.console, self.total, self.index, self.node = console, total, 0, None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == self.RUNNING and record.args:
            self.index += 1
            self.node = str(record.args[0])
            self.console.component_started(self.node, self.index, max(self.total, self.index))
        elif record.msg == self.CACHED and self.node:
            self.console.component_cached(self.node)
        elif record.msg == self.UNRESOLVED and record.args:
            self.console.component_unresolved(str(record.args[0]))
        elif record.msg == self.FINISHED and record.args:
            self.console.component_finished(str(record.args[0]))


# ERROR records that the console does not repeat: the launcher's own note of a failed execution
# (the console names the failed component and shows its traceback instead), and an input TFX
# could not resolve (the component's line says "no input"; the traceback is in the log).
_NOT_ON_CONSOLE = ("Execution %d failed.", ComponentProgress.UNRESOLVED)


class _ConsoleErrors(logging.Handler):
    """ERROR records, ours or a library's, on the console as well as in the log."""

    def __init__(self, console: Console):
        super().__init__(logging.ERROR)
        self.console = console
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg in _NOT_ON_CONSOLE:
            return
        try:
            self.console.error(self.format(record))
        except Exception:  # noqa: BLE001  (logging must not raise)
            self.handleError(record)


@contextlib.contextmanager
def follow_components(console: Console, total: int):
    """Console lines for the components LocalDagRunner launches while this lasts."""
    import absl.logging

    handler = ComponentProgress(console, total)
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(handler)
    # Through absl's verbosity flag, not the logger's level: TensorFlow saves and restores that
    # flag around every SavedModel export, which would reset a level set on the logger alone.
    absl.logging.set_verbosity(absl.logging.INFO)
    try:
        yield handler
    finally:
        absl_logger.removeHandler(handler)


@contextlib.contextmanager
def quiet_console(log_file: str):
    """A `Console` on the terminal while descriptors 1 and 2, and Python's logging, go to
    `log_file` (appended to). Everything is restored on the way out, before an exception
    leaves, so a traceback printed afterwards reaches the terminal."""
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    log = open(log_file, "a", buffering=1, encoding="utf-8")
    log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)} (pid {os.getpid()})\n")
    log.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    out = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    err = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
    console = Console(out, err, log)
    root = logging.getLogger()
    file_handler = logging.StreamHandler(log)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    errors = _ConsoleErrors(console)
    root.addHandler(file_handler)
    root.addHandler(errors)
    level = root.level
    if level > logging.INFO:
        root.setLevel(logging.INFO)
    for fd in (1, 2):
        os.dup2(log.fileno(), fd)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        root.removeHandler(file_handler)
        root.removeHandler(errors)
        root.setLevel(level)
        console._close_open_line()
        out.close()
        err.close()
        log.close()


def report_failure(console: Console, exc: BaseException, log_file: str) -> None:
    """A failed run on the console: the component that failed marked so, the traceback, and
    where the whole log is."""
    node = console.running_component()
    if node:
        console.component_finished(node, failed=True)
    console.error("".join(traceback.format_exception(exc)).rstrip())
    console.error(f"{node or 'the pipeline'} failed ({type(exc).__name__}, traceback above); the whole log, with "
                  f"every library's messages: {log_file}")


# ---------------------------------------------------------------------------------------------
# hap demo: the light model, the pushed cascade and the heavy model side by side

SIDE_BY_SIDE = (("light", "light alone"), ("cascade", "HAP cascade"), ("heavy", "heavy on all"))


def _metric(metrics: dict, name: str):
    entry = metrics.get(name)
    return None if entry is None else entry.get("value")


def side_by_side(result: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes of the table that sets the pushed cascade between the light model
    alone and the heavy model on every candidate, from `hap evaluate`'s result (metrics.json):
    quality on the eval day's logged requests and on funnel/, FLOPs and latency per request."""
    from hap.data.sample_routing import MEAN_AUC
    from hap.evaluation import report

    logged = result["logged"]["metrics"]
    ks = result["ks"]
    rows = []

    def add(label: str, values: list, digits: int = 4) -> None:
        rows.append([label] + [report.fmt(v, digits) if v is not None else "-" for v in values])

    add(f"{report.metric_label(MEAN_AUC)}, day {result['eval_day']}",
        [None if s == "cascade" else _metric(logged[s], MEAN_AUC) for s, _ in SIDE_BY_SIDE])
    for name in ("gauc", f"hitrate@{ks[0]}", f"recall@{ks[-1]}"):
        add(f"{report.metric_label(name)}, day {result['eval_day']}", [_metric(logged[s], name) for s, _ in SIDE_BY_SIDE])
    funnel = result.get("funnel", {})
    if "metrics" in funnel:
        for name in funnel["metrics"][SIDE_BY_SIDE[0][0]]:
            add(f"{report.metric_label(name)}, funnel", [_metric(funnel["metrics"][s], name) for s, _ in SIDE_BY_SIDE])
    part = "funnel" if "funnel" in result.get("compute", {}) else "logged"
    compute = result["compute"][part]
    add(f"MFLOPs / request, {part}", [compute[s]["flops_mean"] / 1e6 for s, _ in SIDE_BY_SIDE], 2)
    add(f"latency p50 ms, {part}", [compute[s].get("p50_ms") for s, _ in SIDE_BY_SIDE], 1)
    data = f"eval day {result['eval_day']}: {result['logged']['requests']} logged requests"
    data += (f"; funnel: {funnel['requests']} requests with all their retrieved candidates" if "metrics" in funnel
             else "; the data has no funnel/, so no full-funnel metrics")
    cost = f"FLOPs and latency over the {part} requests: mean N = {compute['candidates_mean']:.0f} candidates"
    cost += (f", {compute['routed_mean']:.0f} of them routed to the heavy model" if "routed_mean" in compute else "")
    cost += "; latency in-process, one request per signature call"
    notes = [data, cost, "the cascade's score ranks the candidates of one request, so an AUC pooled over requests "
                         "does not apply to it; GAUC is the per-request AUC"]
    return ["", *(label for _, label in SIDE_BY_SIDE)], rows, notes


def side_by_side_lines(result: dict) -> list[str]:
    """`side_by_side` as fixed-width console lines."""
    header, rows, notes = side_by_side(result)
    first = max(len(r[0]) for r in rows)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) + 2 for i in range(1, len(header))]
    lines = ["".join([header[0].ljust(first)] + [h.rjust(w) for h, w in zip(header[1:], widths)])]
    lines += ["".join([r[0].ljust(first)] + [c.rjust(w) for c, w in zip(r[1:], widths)]) for r in rows]
    return lines + [f"- {n}" for n in notes]


def side_by_side_markdown(result: dict, report_path: str, markdown_dir: str) -> str:
    """The table as a Markdown page in `markdown_dir`, linking to the evaluation report."""
    from hap.evaluation import report

    header, rows, notes = side_by_side(result)
    link = os.path.relpath(report_path, markdown_dir)
    return "\n".join(["# HAP demo: the light model, the pushed cascade and the heavy model", "",
                      report.table(header, rows), ""] + [f"- {n}" for n in notes]
                     + [f"- every metric, per source and per K, with plots: [{link}]({link})", ""])
