"""What a person sees of `hap run` and `hap demo` (pipeline/console.py): one line per component,
the closing summary, the side-by-side table; third-party output in the run's log, not on the
console; commands that need no TensorFlow do not import it."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import TUNED_RUN, floors_at, quick_keys
from hap.pipeline import console

HEAVY_MODULES = ("tensorflow", "tfx", "apache_beam", "tensorflow_model_analysis", "tensorflow_transform")


def _python(code: str, cwd: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _hap(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    hap = os.path.join(os.path.dirname(sys.executable), "hap")
    return subprocess.run([hap, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv, rc, stderr", [
    (["--help"], 0, ""),
    (["run", "--help"], 0, ""),
    (["tensorboard", "{run}"], 0, ""),
    (["data", "validate", "{data}"], 0, ""),
    (["config", "show", "--set", "cascade.routing.fraction=0.3"], 0, ""),
    (["run", "--data", "{data}", "--out", "{run}/new", "--set", "cascade.routing.fractoin=0.3"], 2,
     "hap: error: --set: unknown setting 'cascade.routing.fractoin'"),
    # Refused before the console takes the terminal, so anything imported by then writes to it.
    (["run", "--data", "{data}", "--out", "{run}/new", "--keep-runs", "0"], 2,
     "hap: error: --keep-runs must be a whole number >= 1"),
])
def test_commands_that_need_no_tensorflow_do_not_import_it(argv, rc, stderr, tiny_csv, tmp_path):
    run = tmp_path / "run"
    for model in ("light", "heavy"):
        (run / "pipeline_root" / f"Trainer_{model}" / "model_run").mkdir(parents=True)
    argv = [a.format(run=run, data=tiny_csv) for a in argv]
    result = _python(textwrap.dedent(f"""
        import json, sys
        from hap import cli
        try:
            rc = cli.main({argv!r})
        except SystemExit as e:
            rc = e.code
        print(json.dumps({{"rc": rc, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY_MODULES!r})}}))
        """))
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["rc"] == rc, result.stdout
    assert outcome["heavy"] == [], f"`hap {' '.join(argv)}` imported {outcome['heavy'][:5]}"
    assert result.stderr.startswith(stderr) and result.stderr.count("\n") == (stderr != ""), \
        "nothing else on stderr: no warning, no TensorFlow start-up line"


def test_quiet_console_sends_third_party_output_to_the_log_and_keeps_errors(tmp_path):
    """Descriptor-level: what a C++ library writes to fd 2, Python warnings, library log lines and
    prints go to the log; our lines and ERROR records reach the terminal."""
    log = tmp_path / "logs" / "run.log"
    result = _python(textwrap.dedent(f"""
        import logging, os, sys, warnings
        from hap.pipeline import console
        with console.quiet_console({str(log)!r}) as out:
            out.line("our line")
            os.write(2, b"E external/local_xla/cuda_fft.cc:479] Unable to register cuFFT factory\\n")
            warnings.warn("old Python", FutureWarning)
            print("Epoch 1/2")
            logging.getLogger("absl").info("Resolved inputs")
            logging.getLogger("tensorflow").warning("No training configuration found in save file")
            logging.getLogger("hap.components").error("a real problem")
            logging.getLogger("absl").error("[%s] Input resolution error: %s", "LastAcceptedStatistics", "None")
            with out.step("a step of ours"):
                pass
        print("after: on the terminal again")
        """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "our line"
    assert re.fullmatch(r" {8}a step of ours +done +\d+\.\d s", result.stdout.splitlines()[1])
    assert result.stdout.splitlines()[2:] == ["after: on the terminal again"]
    assert result.stderr == "ERROR hap.components: a real problem\n"
    text = log.read_text()
    for sent in ("Unable to register cuFFT factory", "FutureWarning: old Python", "Epoch 1/2",
                 "INFO absl: Resolved inputs", "WARNING tensorflow: No training configuration",
                 "ERROR hap.components: a real problem", "[hap console] our line",
                 "ERROR absl: [LastAcceptedStatistics] Input resolution error: None"):
        assert sent in text, sent


class _Lines:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def _record(msg, *args, level=logging.INFO):
    return logging.LogRecord("absl", level, "local_dag_runner.py", 1, msg, args, None)


def test_one_line_per_component_from_the_runner_records():
    out, err = _Lines(), _Lines()
    c = console.Console(out, err)
    handler = console.ComponentProgress(c, total=4)
    handler.handle(_record("Component %s is running.", "Transform"))
    handler.handle(_record("Going to run a new execution %d", 7))
    handler.handle(_record("Component %s is finished.", "Transform"))
    handler.handle(_record("Component %s is running.", "Trainer_light"))
    handler.handle(_record("A cached execution %d is used.", 8))
    handler.handle(_record("Component %s is finished.", "Trainer_light"))
    handler.handle(_record("Component %s is running.", "Pusher"))
    c.error("ERROR hap: something in between")
    handler.handle(_record("Component %s is finished.", "Pusher"))
    handler.handle(_record("Component %s is running.", "LastAcceptedStatistics"))
    handler.handle(_record("[%s] Input resolution error: %s", "LastAcceptedStatistics", "returned None",
                           level=logging.ERROR))
    handler.handle(_record("Component %s is finished.", "LastAcceptedStatistics"))
    lines = out.text.splitlines()
    assert re.fullmatch(r" *\[1/4\] Transform +done +\d+\.\d s", lines[0]), lines
    assert re.fullmatch(r" *\[2/4\] Trainer_light +cached +\d+\.\d s", lines[1]), lines
    # An error written while Pusher ran ends its line; the status repeats the component's name.
    assert lines[2].strip() == "[3/4] Pusher" and re.fullmatch(r" *\[3/4\] Pusher +done +\d+\.\d s", lines[3]), lines
    # TFX found nothing for a resolver (a first run): said on its line, not as an error.
    assert re.fullmatch(r" *\[4/4\] LastAcceptedStatistics +no input +\d+\.\d s", lines[4]), lines
    assert [e["state"] for e in c.components] == ["done", "cached", "done", "no input"]
    assert err.text == "ERROR hap: something in between\n"


def test_a_failed_component_is_named_with_its_traceback(tmp_path):
    out, err = _Lines(), _Lines()
    c = console.Console(out, err)
    console.ComponentProgress(c, total=2).handle(_record("Component %s is running.", "AnomalyGate"))
    try:
        raise RuntimeError("split 'train', feature 'content_type': unexpected values")
    except RuntimeError as e:
        console.report_failure(c, e, "OUT/logs/run.log")
    assert re.fullmatch(r" *\[1/2\] AnomalyGate +FAILED +\d+\.\d s\n", out.text)
    assert "Traceback (most recent call last)" in err.text
    assert "RuntimeError: split 'train', feature 'content_type'" in err.text
    assert err.text.rstrip().endswith("AnomalyGate failed (RuntimeError, traceback above); the whole log, with "
                                      "every library's messages: OUT/logs/run.log")


# Lines of a library, not ours: a warning category, a log level prefix, a file:line location.
_THIRD_PARTY = re.compile(r"Warning\b|WARNING|INFO|DEBUG|^E\d{4}|external/|absl|\.py:\d+|Instructions for updating|"
                          r"Epoch \d|oneDNN|cuda|Traceback")


def _component_lines(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"\[\s*\d+/(\d+)\] (\S+) +(done|cached) +\d+\.\d s", line)
        if m:
            found[m.group(2)] = m.group(3)
    return found


@pytest.mark.e2e
def test_a_run_console_shows_components_and_summary_and_names_a_missed_floor(pipeline_run_console, e2e_data,
                                                                            tmp_path):
    """Two `hap run`s into one folder on the tests' smallest pipeline data, as a user runs them:
    a clean first run (the session's), then one whose light model misses a floor raised to 1,
    continuing the first in a copy of its folder."""
    run, first = pipeline_run_console
    assert first.stderr == "", "nothing on stderr in a clean run"
    noise = [line for line in first.stdout.splitlines() if _THIRD_PARTY.search(line)]
    assert noise == [], noise
    components = _component_lines(first.stdout)
    assert {"ContractExampleGen", "Transform", "Trainer_light", "Trainer_heavy", "Evaluator_light",
            "Evaluator_heavy", "CascadeAssembler", "Pusher"} <= set(components), first.stdout
    assert set(components.values()) == {"done"}, components
    assert re.search(r"^light: epoch [12] of 2 chosen by validation \(eval AUC EP vs EN 0\.\d{3}, .*\): blessed$",
                     first.stdout, re.M), first.stdout
    # Each model's Tuner (conftest.TUNED_RUN): the choice, the runner-up and the margin on the holdout.
    # The other trial replaces the settings' only when it beats them by more than the holdout's noise.
    for model in ("light", "heavy"):
        tuned = re.search(rf"^{model}: .*: blessed\n  tuned: loss \S+, .*\(holdout AUC (0\.\d{{4}})(?:; runner-up .* "
                          rf"(0\.\d{{4}}), margin (0\.\d{{4}})|, the settings, kept: the best other trial, .*, scored "
                          rf"(0\.\d{{4}}), within the holdout's noise (0\.\d{{4}})); 2 trials; searched: no earlier "
                          rf"search\)$", first.stdout, re.M)
        assert tuned, first.stdout
        chosen, runner_up, margin, other, noise = (float(g) if g else None for g in tuned.groups())
        if margin is not None:
            assert abs(chosen - runner_up - margin) <= 1.5e-4
        else:
            assert 0 < other - chosen <= noise + 1e-4
    assert re.search(r"^  tuned: .*model_config", first.stdout, re.M), "the heavy model chose its architecture"
    pushed = re.search(r"^pushed: cascade version (\d+) to (\S+)$", first.stdout, re.M)
    assert pushed and pushed.group(2) == os.path.join(run, "serving", "hap", pushed.group(1)), first.stdout
    assert os.path.isfile(os.path.join(pushed.group(2), "saved_model.pb"))
    assert re.search(r"cascade FLOPs per request of 1000 candidates with \d+ routed to the heavy model: [\d.]+ M",
                     first.stdout), first.stdout
    for command in (f"serve {run}/serving/hap", f"query --data {e2e_data}", f"tensorboard {run}",
                    f"evaluate --model_base_path {run}/serving/hap --data {e2e_data}"):
        assert re.search(rf"^  \S*hap {re.escape(command)}", first.stdout, re.M), command
    log = open(console.log_path(run)).read()
    assert "FutureWarning" in log or "WARNING" in log, "the third-party output went to the log"

    out = str(tmp_path / "run")
    os.makedirs(out)
    shutil.copy(os.path.join(run, "metadata.sqlite"), out)
    shutil.copytree(os.path.join(run, "serving"), os.path.join(out, "serving"))
    floors = floors_at(0.0)
    floors["light"]["EN"] = 1.0
    sets = [arg for key, value in {**quick_keys(0.0), **TUNED_RUN}.items() if not key.endswith("auc_floors")
            for arg in ("--set", f"{key}={json.dumps(value)}")]
    second = _hap("run", "--data", e2e_data, "--out", out, *sets, "--auc-floors", json.dumps(floors))
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stderr == ""
    # What re-runs depends on what changed (the floors: the Evaluators at least); the rest is cached.
    again = _component_lines(second.stdout)
    assert again["Evaluator_light"] == "done" and "cached" in again.values(), second.stdout
    assert again["Tuner_light"] == again["Trainer_light"] == "cached", second.stdout
    assert re.search(r"^light: .*: NOT blessed\n  EP vs EN AUC 0\.\d{3} < floor 1\n", second.stdout, re.M), second.stdout
    assert re.search(r"^heavy: .*: blessed$", second.stdout, re.M)
    assert (f"pushed: NOTHING, as the light model was not blessed; {out}/serving/hap still holds version "
            f"{pushed.group(1)} of an earlier run") in second.stdout


def test_demo_sets_the_cascade_between_the_light_and_the_heavy_model(pipeline_run, e2e_funnel_data, tmp_path):
    """`hap demo`'s last step on the shared pipeline run: `hap evaluate`'s outputs beside it and
    the side-by-side table on the console and in summary.md."""
    from hap import cli

    out, err = _Lines(), _Lines()
    demo = tmp_path / "demo"
    demo.mkdir()
    cli._compare(console.Console(out, err), pipeline_run, e2e_funnel_data, str(demo))
    assert err.text == ""
    assert {"metrics.json", "report.md"} <= set(os.listdir(demo / "evaluation"))
    lines = out.text.splitlines()
    assert re.fullmatch(r" +evaluating the cascade +done +\d+\.\d s", lines[0])
    header = lines[2].split()
    assert header == ["light", "alone", "HAP", "cascade", "heavy", "on", "all"], lines
    rows = {re.split(r"\s{2,}", line.strip())[0]: re.split(r"\s{2,}", line.strip())[1:] for line in lines[3:]
            if re.search(r"\s{2,}", line.strip())}
    flops = [float(v) for v in next(v for k, v in rows.items() if k.startswith("MFLOPs / request, funnel"))]
    assert flops[0] < flops[1] < flops[2], "light alone < cascade < heavy on every candidate"
    assert any(k.startswith("latency p50 ms, funnel") for k in rows)
    assert any(k.startswith("GAUC (exposed), day") for k in rows)
    assert any(k.endswith(", funnel") and "NDCG" in k for k in rows)
    assert next(v for k, v in rows.items() if k.startswith("AUC mean"))[1] == "-"
    summary = (demo / "summary.md").read_text()
    assert "|  | light alone | HAP cascade | heavy on all |" in summary
    assert "(evaluation/report.md)" in summary


def test_evaluate_prints_as_hap_run_does(cascade_model, e2e_data, tmp_path):
    """`hap evaluate`: our lines on the terminal, every library's output in OUT.log beside OUT."""
    out = tmp_path / "evaluation"
    done = _hap("evaluate", "--model_base_path", cascade_model, "--data", e2e_data, "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == "", done.stderr
    assert [line for line in done.stdout.splitlines() if _THIRD_PARTY.search(line)] == []
    assert done.stdout.startswith(f"hap evaluate: {cascade_model} on {e2e_data} into {out}; every library's "
                                  f"messages go to {out}.log")
    assert re.search(rf"^evaluated .* logged requests in \d+s: {re.escape(str(out / 'report.md'))}$", done.stdout, re.M)
    log = (tmp_path / "evaluation.log").read_text()
    assert "WARNING" in log or "Warning" in log, "the libraries' output went to the log"
