"""`hap evaluate` on the cascade the pipeline pushed for `e2e_data`."""
import collections
import filecmp
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from hap import cli
from hap.data import contract as c
from hap.data import reader
from hap.evaluation import auc_metrics, evaluate, top_k_metrics
from hap.serving import request as rq


@pytest.fixture(scope="module")
def funnel_data(e2e_data, e2e_funnel_data):
    same = filecmp.dircmp(os.path.join(e2e_funnel_data, c.SAMPLES_DIR), os.path.join(e2e_data, c.SAMPLES_DIR))
    assert not same.diff_files and not same.left_only and not same.right_only, "the cascade must know these ids"
    return e2e_funnel_data


@pytest.fixture(scope="module")
def evaluated(cascade_model, funnel_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("evaluate") / "report")
    base = os.path.dirname(cascade_model)
    assert cli.main(["evaluate", "--model_base_path", base, "--data", funnel_data, "--out", out, "--quiet"]) == 0
    return out


def _strict_json(path):
    def reject(token):
        raise ValueError(f"{path}: {token} is not JSON")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=reject)


def test_writes_metrics_report_and_plots(evaluated, cascade_model):
    result = _strict_json(os.path.join(evaluated, "metrics.json"))
    assert set(result["logged"]["metrics"]) == set(evaluate.SIGNATURES)
    # A model base path resolves to its newest complete version.
    assert os.path.dirname(result["model"]) == os.path.dirname(os.path.abspath(cascade_model))
    assert result["funnel"]["requests"] == 3 and "skipped" not in result["funnel"]
    for part in (evaluate.LOGGED, evaluate.FUNNEL):
        summary = result["compute"][part]
        for s in evaluate.SIGNATURES:
            assert summary[s]["flops_mean"] > 0 and summary[s]["p50_ms"] > 0
        # The cascade costs less than the heavy model on all candidates.
        assert summary["cascade"]["flops_mean"] < summary["heavy"]["flops_mean"]
    with open(os.path.join(evaluated, "report.md"), encoding="utf-8") as f:
        text = f.read()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"auc.png", "topk.png", "funnel.png", "compute.png"} <= set(images)
    for name in images:
        with open(os.path.join(evaluated, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert "Skipped" not in text
    assert not [p for p in os.listdir(os.path.dirname(evaluated)) if ".tmp-" in p], "temporary folder left behind"


def _signature_outputs(model_dir, data_dir, part):
    """Per-candidate (request, rows) and each signature's scores, called here directly."""
    info = evaluate.load_info(model_dir)
    model = tf.saved_model.load(model_dir)
    by_request = collections.OrderedDict()
    rows_in = list(reader.read_rows(data_dir, part, c.load_features(data_dir)))
    if part == c.SAMPLES_DIR:
        last = max(r["day"] for r in rows_in)
        rows_in = [r for r in rows_in if r["day"] == last]
    for row in rows_in:
        by_request.setdefault(row["request_id"], []).append(row)
    request, rows, scores = [], [], {s: [] for s in evaluate.SIGNATURES}
    for request_id, group in by_request.items():
        inputs = {k: tf.constant(v, dtype=tf.string if v.dtype == object else None)
                  for k, v in rq.RequestLayout(info.features).from_rows(group).items()}
        for s in evaluate.SIGNATURES:
            scores[s].append(model.signatures[s](**inputs)["scores"].numpy())
        request += [request_id] * len(group)
        rows += group
    return np.array(request), rows, {s: np.concatenate(v) for s, v in scores.items()}


def test_metrics_match_the_metric_modules_on_signature_outputs(evaluated, cascade_model, funnel_data):
    result = _strict_json(os.path.join(evaluated, "metrics.json"))
    request, rows, scores = _signature_outputs(cascade_model, funnel_data, c.SAMPLES_DIR)
    label = np.array([r["click"] for r in rows])
    group = np.array([c.sample_group(r["source"], r["click"]) for r in rows])
    for s in evaluate.SIGNATURES:
        expected = dict(auc_metrics.auc_by_source(label, scores[s], group))
        expected["gauc"] = auc_metrics.gauc(request, label, scores[s], group)
        for k in result["ks"]:
            expected[f"hitrate@{k}"] = top_k_metrics.hitrate_at_k(request, label, scores[s], k)
            expected[f"recall@{k}"] = top_k_metrics.recall_at_k(request, label, scores[s], k)
        got = result["logged"]["metrics"][s]
        assert set(got) == set(expected)
        for name, m in expected.items():
            assert got[name]["value"] == pytest.approx(m.value, abs=1e-6), (s, name)
            assert got[name]["requests"] == m.requests and got[name]["samples"] == m.samples, (s, name)

    request, rows, scores = _signature_outputs(cascade_model, funnel_data, c.FUNNEL_DIR)
    utility = np.array([r[c.ORACLE_COLUMN] for r in rows])
    for s in evaluate.SIGNATURES:
        got = result["funnel"]["metrics"][s]
        assert set(got) == {"ndcg@100", "oracle_recall@100", "ndcg@200", "oracle_recall@200"}
        for k in (100, 200):
            assert got[f"ndcg@{k}"]["value"] == pytest.approx(
                top_k_metrics.ndcg_at_k(request, utility, scores[s], k).value, abs=1e-6)
            assert got[f"oracle_recall@{k}"]["value"] == pytest.approx(
                top_k_metrics.oracle_recall_at_k(request, utility, scores[s], k, 10).value, abs=1e-6)


def test_without_funnel_the_funnel_metrics_are_skipped_and_reported(cascade_model, e2e_data, tmp_path):
    out = str(tmp_path / "report")
    assert cli.main(["evaluate", "--model_base_path", cascade_model, "--data", e2e_data, "--out", out, "--quiet",
                     "--k", "2"]) == 0
    result = _strict_json(os.path.join(out, "metrics.json"))
    assert "funnel/" in result["funnel"]["skipped"] and "metrics" not in result["funnel"]
    assert set(result["compute"]) == {evaluate.LOGGED}
    assert result["ks"] == [2] and "hitrate@2" in result["logged"]["metrics"]["cascade"]
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        text = f.read()
    assert "Skipped:" in text and "funnel/" in text
    assert not os.path.exists(os.path.join(out, "funnel.png"))
    # The output folder is not replaced silently.
    assert cli.main(["evaluate", "--model_base_path", cascade_model, "--data", e2e_data, "--out", out, "--quiet"]) == 2


def test_resolve_model_takes_the_newest_complete_version(tmp_path):
    for version, complete in (("7", True), ("12", True), ("30", False), ("notes", True)):
        os.makedirs(tmp_path / version)
        if complete:
            (tmp_path / version / "saved_model.pb").write_bytes(b"")
    assert evaluate.resolve_model(str(tmp_path)) == str(tmp_path / "12")
    assert evaluate.resolve_model(str(tmp_path / "7")) == str(tmp_path / "7")
    with pytest.raises(FileNotFoundError, match="complete version"):
        evaluate.resolve_model(str(tmp_path / "30"))


def test_a_dataset_without_a_feature_the_model_reads_is_refused(cascade_model, e2e_data, tmp_path, capsys):
    data = str(tmp_path / "data")
    shutil.copytree(e2e_data, data)
    features = c.load_features(data)
    dropped = features.listed[-1].name
    with open(os.path.join(data, c.FEATURES_FILE), "w", encoding="utf-8") as f:
        f.write(c.dump_features(features.listed[:-1]))
    assert cli.main(["evaluate", "--model_base_path", cascade_model, "--data", data, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert c.FEATURES_FILE in err and repr(dropped) in err
    assert not os.path.exists(tmp_path / "o")


def _reordered_copy(src: str, dst: str) -> str:
    """`src` with its samples' rows in reverse order, in one file."""
    shutil.copytree(src, dst)
    _, files = reader.data_files(os.path.join(dst, c.SAMPLES_DIR))
    header, rows = None, []
    for path in files:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        header, rows = lines[0], rows + lines[1:]
        os.remove(path)
    with open(os.path.join(dst, c.SAMPLES_DIR, "all.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join([header] + rows[::-1]) + "\n")
    return dst


def test_a_request_sample_is_the_eval_days_lowest_hashing_requests_whatever_the_row_order(tiny_csv, tiny_tfrecord,
                                                                                           tmp_path):
    features = c.load_features(tiny_csv)
    rows = list(reader.read_rows(tiny_csv, features=features))
    last = max(r["day"] for r in rows)
    day, every = evaluate.eval_day_requests(tiny_csv, features)
    assert day == last and set(every) == {r["request_id"] for r in rows if r["day"] == last}
    expected = sorted(every, key=evaluate._id_hash)[:7]

    reordered = _reordered_copy(tiny_csv, str(tmp_path / "reordered"))
    for data_dir in (tiny_csv, reordered, tiny_tfrecord):
        day, sample = evaluate.eval_day_requests(data_dir, features, max_requests=7)
        assert day == last and set(sample) == set(expected), data_dir
        for request_id in expected:
            assert sorted(sample[request_id], key=lambda r: r["item_id"]) == sorted(
                every[request_id], key=lambda r: r["item_id"])
    # A sample at least as large as the day is the whole day, in file order.
    assert list(evaluate.eval_day_requests(tiny_csv, features, max_requests=len(every))[1]) == list(every)

    funnel = evaluate.funnel_requests(tiny_csv, features)
    assert set(evaluate.funnel_requests(tiny_csv, features, max_requests=2)) == set(
        sorted(funnel, key=evaluate._id_hash)[:2])
    with pytest.raises(ValueError, match="size >= 1"):
        evaluate.RequestSample(0)


def test_rows_outside_a_sample_are_not_parsed_in_full(tiny_csv, tmp_path):
    # A malformed value on an earlier day is the validator's to find; reading the eval day skips it,
    # and the same value on the eval day is an error naming its file and line.
    features = c.load_features(tiny_csv)
    numeric = next(f.name for f in features.features if f.kind == c.NUMERIC)
    data_dir = _reordered_copy(tiny_csv, str(tmp_path / "data"))
    path = os.path.join(data_dir, c.SAMPLES_DIR, "all.csv")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    day_at, value_at = header.index("day"), header.index(numeric)
    last = max(int(line.split(",")[day_at]) for line in lines[1:])
    line_of = {d: next(i for i, line in enumerate(lines) if i and int(line.split(",")[day_at]) == d) for d in (0, last)}

    def corrupt(index):
        fields = lines[index].split(",")
        fields[value_at] = "not-a-number"
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines[:index] + [",".join(fields)] + lines[index + 1:]) + "\n")

    corrupt(line_of[0])
    day, requests = evaluate.eval_day_requests(data_dir, features)
    assert day == last and sum(map(len, requests.values())) == sum(
        1 for line in lines[1:] if int(line.split(",")[day_at]) == last)
    with pytest.raises(c.ContractError, match=f"all.csv:{line_of[0] + 1}: column '{numeric}'"):
        list(reader.read_rows(data_dir, features=features))
    corrupt(line_of[last])
    with pytest.raises(c.ContractError, match=f"all.csv:{line_of[last] + 1}: column '{numeric}'"):
        evaluate.eval_day_requests(data_dir, features)


def test_a_routing_chosen_within_a_budget_is_reported_with_its_options_and_plot(tmp_path):
    from hap.evaluation import report
    from hap.pipeline import run_report

    def option(label, kind, mflops, value, within):
        return {"label": label, "routing": {"kind": kind}, "mflops": mflops, "value": value, "within": within}

    record = {"mflops": 40.0, "candidates": 1000, "metric": "oracle_recall@200", "part": "funnel", "requests": 12,
              "options": [option("top_k 10%", "top_k", 31.0, 0.61, True), option("top_k 50%", "top_k", 71.0, 0.7, False),
                          option("light model alone", "light_only", 21.0, 0.55, True)],
              "chosen": "top_k 10%", "runner_up": "light model alone", "margin": 0.06, "light_only": False}
    assert run_report.budget_lines({"budget": record}) == [
        "routing: top_k 10% chosen within 40 MFLOPs per request of 1000 candidates (oracle_recall@200 0.6100 on 12 "
        "funnel requests, a half of the eval day the cascade is not blessed on; runner-up light model alone 0.5500, "
        "margin 0.0600; 2 of 3 options within the budget)"]
    section = "\n".join(report.budget_section(record))
    rows = [line for line in section.splitlines() if line.startswith("| ") and "MFLOPs" not in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == ["light model alone", "top_k 10%", "top_k 50%"]
    assert "**chosen**" in rows[1] and "runner-up" in rows[0] and "| no |" in rows[2]
    alone = {**record, "chosen": "light model alone", "runner_up": None, "margin": None, "light_only": True}
    assert run_report.budget_lines({"budget": alone})[1].startswith("  no routed option within the budget")
    assert os.path.getsize(tmp_path / report._budget_plot(report.pyplot(), record, str(tmp_path))) > 10_000
