"""End to end: the whole pipeline with LocalDagRunner on tiny data."""
import csv
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from hap.data import contract as c
from hap.data import reader
from hap.pipeline import local_runner, run_report
from hap.serving import request as rq
from conftest import RESOLVED_ROLES, TUNED_RUN, role_mismatches

EVERY_COMPONENT = {"ContractExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate",
                   "Transform", "RequestGrouper", "Trainer_light", "Trainer_heavy", "Evaluator_light", "Evaluator_heavy",
                   "CascadeAssembler", "Pusher"}
ARTIFACTS = {"ContractExampleGen": "examples", "StatisticsGen": "statistics", "ExampleValidator": "anomalies",
             "Transform": "transform_graph", "RequestGrouper": "request_examples", "Trainer_light": "model", "Trainer_heavy": "model",
             "Evaluator_light": "evaluation", "Evaluator_heavy": "evaluation", "CascadeAssembler": "model"}


def _pushed(out):
    path = os.path.join(out, "serving", "hap")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_pipeline_runs_caches_and_pushes_only_blessed_models(e2e_data, pipeline_run, run_pipeline):
    out = pipeline_run
    first = run_report.latest_by_node(out)
    assert EVERY_COMPONENT <= set(first), set(first)
    assert {first[n]["state"] for n in EVERY_COMPONENT} == {"COMPLETE"}, first
    for node, artifact in ARTIFACTS.items():
        path = os.path.join(out, "pipeline_root", node, artifact)
        assert os.path.isdir(path) and any(files for _, _, files in os.walk(path)), f"{node} wrote no {artifact}"
    assert len(_pushed(out)) == 1, "the blessed cascade was not pushed"
    pushed = os.path.join(out, "serving", "hap", _pushed(out)[0])
    assert os.path.isfile(os.path.join(pushed, "saved_model.pb"))
    assert os.path.isfile(os.path.join(pushed, "assets.extra", "tf_serving_warmup_requests"))
    for role in ("light", "heavy"):
        logs = local_runner.tensorboard_logdirs(out)[role]
        written = {d for d, _, files in os.walk(logs) if any(f.startswith("events.") for f in files)}
        assert any(d.endswith("gradient_conflict") for d in written), written
        assert any(d.endswith("per_source_auc") for d in written), written

    # The artifacts the resolvers read carry the role a compiled Kubeflow query selects them by.
    assert role_mismatches(out, RESOLVED_ROLES + ("Tuner_light.best_hyperparameters",
                                                  "Tuner_heavy.best_hyperparameters")) == {}

    # Re-run with unchanged data (and the session run's tuning): the baselines are models trained
    # on other data, so the first run's blessed models are not today's baselines, the last search
    # is not one made from today's data, and the whole run is served from cache.
    run_pipeline(e2e_data, out, floor=0.0, **TUNED_RUN)
    second = run_report.latest_by_node(out)
    assert {second[n]["state"] for n in EVERY_COMPONENT | {"Tuner_light", "Tuner_heavy"}} == {"CACHED"}, second
    pushed = _pushed(out)

    # A floor no model can clear: the Evaluators re-run on the cached models and bless nothing,
    # so the cascade of those models is assembled but not pushed.
    run_pipeline(e2e_data, out, floor=1.0, **TUNED_RUN)
    fourth = run_report.latest_by_node(out)
    assert fourth["Trainer_light"]["state"] == "CACHED" and fourth["Evaluator_light"]["state"] == "COMPLETE"
    assert fourth["CascadeAssembler"]["state"] == "COMPLETE"
    assert _pushed(out) == pushed, "a cascade of unblessed models was pushed"

    # Blessed models again (cached), but a cascade that must beat item popularity by more than
    # any GAUC can: the baseline of a cascade of today's models is popularity, not the first
    # run's cascade; it is not blessed, nothing is pushed, and the summary says why.
    run_pipeline(e2e_data, out, floor=0.0, **TUNED_RUN, **{"cascade.popularity_margin": 1.0})
    fifth = run_report.latest_by_node(out)
    assert fifth["Evaluator_light"]["state"] == "CACHED" and fifth["CascadeAssembler"]["state"] == "COMPLETE"
    assert _pushed(out) == pushed
    lines = run_report.summary_lines(out)
    assert any(re.fullmatch(r"cascade: NOT blessed \(no blessed cascade to compare with; gauc on \d+ logged requests "
                            r"[\d.]+ does not beat item popularity's \(days 0-1\) [\d.]+ by more than "
                            r"1\.0\)", line) for line in lines), lines
    assert any(line.startswith("pushed: NOTHING, as the cascade was not blessed; ") for line in lines), lines


FOREIGN_FEATURES = """version: 1
features:
  - {name: hist_items, role: user, kind: sequence, max_len: 20, target: item_id}
  - {name: i_category, role: item, kind: categorical}
  - {name: i_age_hours, role: item, kind: numeric}
  - {name: c_hour, role: context, kind: categorical}
  - {name: x_user_cat_ctr, role: cross, kind: numeric}
"""
FOREIGN_COLUMNS = {"request_id": "request_id", "user_id": "user_id", "item_id": "item_id", "day": "day",
                   "source": "source", "click": "click", "content_type": "content_type",
                   "prerank_pos": "prerank_pos", "rank_pos": "rank_pos", "expose_pos": "expose_pos",
                   "u_click_seq": "hist_items", "i_category": "i_category", "i_age_hours": "i_age_hours",
                   "c_hour": "c_hour", "x_user_cat_ctr": "x_user_cat_ctr"}


def test_a_foreign_feature_set_with_string_ids_runs_end_to_end(e2e_data, run_pipeline, tmp_path):
    """Another contract dataset: five features of other names, string request and user ids, no
    optional labels, missing values and empty histories; the schema is derived from its
    features.yaml."""
    foreign = tmp_path / "foreign"
    (foreign / "samples").mkdir(parents=True)
    (foreign / "features.yaml").write_text(FOREIGN_FEATURES)
    for name in sorted(os.listdir(os.path.join(e2e_data, "samples"))):
        with open(os.path.join(e2e_data, "samples", name), newline="") as f:
            rows = list(csv.DictReader(f))
        with open(foreign / "samples" / name, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(FOREIGN_COLUMNS.values())
            for r in rows:
                r["request_id"], r["user_id"] = f"req-{r['request_id']}", f"user-{r['user_id']}"
                writer.writerow([r[k] for k in FOREIGN_COLUMNS])
    out = str(tmp_path / "run")
    # A serving budget every option fits: the assembler chooses the routing by GAUC on half the eval day.
    run_pipeline(str(foreign), out, floor=0.0, **{"cascade.budget.mflops": 1e9})
    ran = run_report.latest_by_node(out)
    assert {ran[n]["state"] for n in EVERY_COMPONENT} == {"COMPLETE"}, ran
    assert os.path.isfile(os.path.join(out, "schema", "schema.pbtxt"))
    assert len(_pushed(out)) == 1
    info = run_report.cascade_info(os.path.join(out, "serving", "hap", _pushed(out)[0]))
    record = info["budget"]
    best = max(o["value"] for o in record["options"])
    chosen = next(o for o in record["options"] if o["label"] == record["chosen"])
    assert chosen["value"] == best and all(o["within"] for o in record["options"]) and len(record["options"]) == 17
    assert info["settings"]["routing"] == chosen["routing"]
    assert any(line.startswith(f"routing: {record['chosen']} chosen within 1e+09 MFLOPs per request of 1000 "
                               f"candidates (gauc {best:.4f} on ") and line.endswith("; 17 of 17 options within the "
                                                                                    "budget)")
               for line in run_report.summary_lines(out)), run_report.summary_lines(out)
    # The pushed cascade serves this feature set's requests, string ids and empty histories included.
    features = c.load_features(str(foreign))
    rows = list(reader.read_rows(str(foreign), features=features))
    request = rq.RequestLayout(features).from_rows([r for r in rows if r["request_id"] == rows[0]["request_id"]])
    assert request["user_id"][0].startswith("user-")
    model = tf.saved_model.load(os.path.join(out, "serving", "hap", _pushed(out)[0]))
    scores = model.signatures["cascade"](**{k: tf.constant(v, dtype=tf.string if v.dtype == object else None)
                                            for k, v in request.items()})["scores"].numpy()
    assert len(scores) == len(request["item_id"]) and np.isfinite(scores).all()
    # The heavy model scores a request's candidates with the user's side computed once
    # (decision 0020); on this feature set too, that equals the model on each candidate's own
    # tf.Example, missing values and empty histories included.
    layout = rq.RequestLayout(features)
    for request_id in sorted({r["request_id"] for r in rows})[:5]:
        request = layout.from_rows([r for r in rows if r["request_id"] == request_id])
        tensors = {k: tf.constant(v, dtype=tf.string if v.dtype == object else None) for k, v in request.items()}
        per_row = model.signatures["score_examples"](examples=tf.constant(layout.to_examples(request)))["heavy_scores"]
        np.testing.assert_allclose(model.signatures["heavy"](**tensors)["scores"].numpy(), per_row.numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_anomalous_data_stops_the_run_before_training(e2e_data, run_pipeline, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(e2e_data, bad)
    path = os.path.join(bad, "samples", "day-0.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    column = rows[0].index("content_type")
    for row in rows[1:40]:
        row[column] = "podcast"
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    out = str(tmp_path / "run")
    with pytest.raises(Exception, match=r"feature 'content_type'"):
        run_pipeline(bad, out, floor=0.0)
    ran = run_report.latest_by_node(out)
    assert ran["ExampleValidator"]["state"] == "COMPLETE"
    assert ran["AnomalyGate"]["state"] == "FAILED"
    assert not {"Transform", "RequestGrouper", "Trainer_light", "Trainer_heavy"} & set(ran)
