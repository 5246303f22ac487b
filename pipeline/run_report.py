"""What a finished run did, read back from ML Metadata: per-component state and wall time, and
the artifacts the components produced."""
from __future__ import annotations

import json
import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata
from tfx.utils import path_utils

from hap import storage
from hap.data.sample_routing import MODELS, contrast_metric
from hap.pipeline import console

_STATES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


SQLITE_FILE, SERVER_FILE = "metadata.sqlite", "metadata.json"


def mysql_connection(mysql):
    """The connection config of the MySQL or MariaDB server `mysql` (settings' `metadata.mysql`),
    its password from the environment variable it names, after checking that the server answers
    and takes the login: ML Metadata's own error names neither host nor port."""
    import socket

    config = metadata.mysql_metadata_connection_config(
        host=mysql.host, port=mysql.port, database=mysql.database, username=mysql.user,
        password=os.environ.get(mysql.password_env, ""))
    try:
        socket.create_connection((mysql.host, mysql.port), timeout=5).close()
    except OSError as e:
        raise ConnectionError(f"ML Metadata: no MySQL server answers at {mysql.host}:{mysql.port} "
                              f"(metadata.mysql.host/port): {e}") from None
    try:
        metadata_store.MetadataStore(config)
    except RuntimeError as e:
        raise ConnectionError(f"ML Metadata: the MySQL server at {mysql.host}:{mysql.port} refused user {mysql.user!r} "
                              f"on database {mysql.database!r} (password from ${mysql.password_env}): {e}") from None
    return config


def record_metadata_server(out_dir: str, mysql) -> None:
    """OUT/metadata.json: which server holds the run's ML Metadata, for the commands that read a
    run directory later (`hap prune`, `hap benchmark --run`, the run's summary). No password."""
    import dataclasses

    path = os.path.join(out_dir, SERVER_FILE)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump({"backend": "mysql", **dataclasses.asdict(mysql)}, f, indent=1)
    os.replace(f"{path}.tmp", path)


def open_store(out_dir: str) -> metadata_store.MetadataStore:
    path, server = os.path.join(out_dir, SQLITE_FILE), os.path.join(out_dir, SERVER_FILE)
    if os.path.isfile(server):
        from hap.settings import MySQLSettings
        from hap.tree import parse

        with open(server, encoding="utf-8") as f:
            recorded = json.load(f)
        recorded.pop("backend", None)
        return metadata_store.MetadataStore(mysql_connection(parse(MySQLSettings, recorded, "metadata.mysql")))
    # Checked first: opening a missing SQLite store would create an empty one.
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{out_dir}: no metadata.sqlite, so not the output directory of a pipeline run")
    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(path))


def _node_context(store: metadata_store.MetadataStore, node: str):
    """The ML Metadata context of the component `node` of the run's pipeline (whatever its
    `pipeline_name` setting: an output directory holds one pipeline)."""
    pipelines = store.get_contexts_by_type("pipeline")
    for pipeline in sorted(pipelines, key=lambda ctx: ctx.id, reverse=True):
        context = store.get_context_by_type_and_name("node", f"{pipeline.name}.{node}")
        if context:
            return context
    return None


def executions(out_dir: str) -> list[dict]:
    """Every execution of the run directory's pipeline, oldest first: node id, state, seconds."""
    store = open_store(out_dir)
    contexts = {ctx.id: ctx.name for ctx in store.get_contexts_by_type("node")}
    result = []
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        nodes = [contexts[ctx.id] for ctx in store.get_contexts_by_execution(execution.id) if ctx.id in contexts]
        result.append({
            "node": nodes[0].split(".", 1)[-1] if nodes else execution.type,
            "state": _STATES[execution.last_known_state],
            "seconds": (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0,
        })
    return result


def latest_by_node(out_dir: str) -> dict[str, dict]:
    latest = {}
    for e in executions(out_dir):
        latest[e["node"]] = e
    return latest


def latest_execution_property(out_dir: str, node: str, name: str) -> str:
    """An execution property (e.g. "custom_config") of the newest execution of the component `node`."""
    store = open_store(out_dir)
    context = _node_context(store, node)
    executions = store.get_executions_by_context(context.id) if context else []
    if not executions:
        raise FileNotFoundError(f"{out_dir}: its ML Metadata records no execution of {node}")
    return max(executions, key=lambda e: e.id).custom_properties[name].string_value


def latest_artifact(out_dir: str, node: str, type_name: str) -> metadata_store_pb2.Artifact:
    """The LIVE artifact of type `type_name` (e.g. "TransformGraph", "Model") output by the newest
    execution of the component `node` (its id in the pipeline, e.g. "Transform", "Trainer_light")
    that output one, in the run directory `out_dir`; its `uri` is where it lies. A cached
    execution records the artifact it reuses as its output, so a run served from cache finds the
    artifact it reused, not a newer one of an earlier run."""
    store = open_store(out_dir)
    context = _node_context(store, node)
    execution_ids = [e.id for e in store.get_executions_by_context(context.id)] if context else []
    # Not the node context's artifacts: TFX attributes a component's inputs to it as well.
    outputs: dict[int, set] = {}
    for event in store.get_events_by_execution_ids(execution_ids) if execution_ids else []:
        if event.type == metadata_store_pb2.Event.OUTPUT:
            outputs.setdefault(event.execution_id, set()).add(event.artifact_id)
    artifacts = {a.id: a for a in store.get_artifacts_by_id(sorted(set().union(*outputs.values())))
                 if a.type == type_name and a.state == metadata_store_pb2.Artifact.LIVE} if outputs else {}
    for execution_id in sorted(outputs, reverse=True):
        found = [artifacts[i] for i in outputs[execution_id] if i in artifacts]
        if found:
            return max(found, key=lambda a: a.id)
    raise FileNotFoundError(f"{out_dir}: its ML Metadata records no {type_name} output of {node}; "
                            f"is it a `hap run` output that got past {node}?")


def training_summary(out_dir: str) -> dict[str, dict]:
    """Per model: the epoch validation chose, the epochs run, the eval AUCs at the chosen epoch
    (from the Trainer's training_history.json), whether its Evaluator blessed it, and the warm
    start (`warm_started_from`, the base model's path or None; `warm_start`, what was loaded or
    why not)."""
    summary = {}
    for model in MODELS:
        run_dir = latest_artifact(out_dir, f"Trainer_{model}", "ModelRun").uri
        history = json.loads(storage.read_text(storage.join(run_dir, "training_history.json")))
        blessing = latest_artifact(out_dir, f"Evaluator_{model}", "ModelBlessing")
        summary[model] = {"chosen_epoch": history["chosen_epoch"], "epochs_run": history["epochs_run"],
                          "auc": history["per_source_auc"][history["chosen_epoch"] - 1],
                          "blessed": bool(blessing.custom_properties["blessed"].int_value),
                          "warm_started_from": history.get("warm_started_from"),
                          "warm_start": history.get("warm_start")}
    return summary


def latest_inputs(out_dir: str, node: str) -> dict[str, list[metadata_store_pb2.Artifact]]:
    """The input artifacts of the newest execution of the component `node`, by input key."""
    store = open_store(out_dir)
    context = _node_context(store, node)
    executions = store.get_executions_by_context(context.id) if context else []
    if not executions:
        return {}
    events = [e for e in store.get_events_by_execution_ids([max(executions, key=lambda e: e.id).id])
              if e.type == metadata_store_pb2.Event.INPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])} if events else {}
    inputs = {}
    for event in events:
        for step in event.path.steps:
            if step.HasField("key"):
                inputs.setdefault(step.key, []).append(artifacts[event.artifact_id])
    return inputs


def _span(artifact: metadata_store_pb2.Artifact) -> int | None:
    return artifact.properties["span"].int_value if "span" in artifact.properties else None


def days_text(out_dir: str) -> str | None:
    """Which days the newest run trained and evaluated on (ContractExampleGen's days.json)."""
    from hap.components.contract_example_gen import executor

    try:
        days = executor.read_days(latest_artifact(out_dir, "ContractExampleGen", "Examples").uri)
    except FileNotFoundError:
        return None
    if not days:
        return None
    text = f"data: trained on {_days(days['train'])}, evaluated on {_days(days['eval'])}"
    if days["outside_window"]:
        text += f" ({_days(days['outside_window'])} outside the window)"
    return text


def _days(days: list) -> str:
    if len(days) == 1:
        return f"day {days[0]}"
    if days == list(range(days[0], days[-1] + 1)):
        return f"days {days[0]}-{days[-1]}"
    return "days " + ", ".join(map(str, days))


def drift_text(out_dir: str) -> str | None:
    """What the newest drift check compared and found; None when the pipeline has none."""
    inputs = latest_inputs(out_dir, "DriftGate")
    if not inputs:
        return None
    today = _span(inputs["statistics"][0])
    baseline = inputs.get("baseline_statistics")
    if not baseline:
        return f"drift check: no accepted day yet; day {today} is the baseline of the next run"
    from hap.components.drift_gate import component as drift_gate

    anomalies = inputs["anomalies"][0]
    split_names = anomalies.properties["split_names"].string_value if "split_names" in anomalies.properties else "[]"
    measured = drift_gate.drift_measurements(anomalies.uri, split_names)
    drifted = [m for m in measured if m["value"] > m["threshold"]]
    found = "DRIFT, accepted (--accept-drift)" if drifted else "within every threshold"
    values = ", ".join(f"{m['feature']} {_MEASURES.get(m['measure'], m['measure'])} {m['value']:.3f}/{m['threshold']:g}"
                       for m in measured)
    against = _span(baseline[0])
    if against == today:
        return f"drift check: day {today} was accepted by an earlier run of this day"
    return f"drift check: day {today} against day {against} (the last accepted): {found} ({values})"


_MEASURES = {"L_INFTY": "L-inf", "JENSEN_SHANNON_DIVERGENCE": "JSD"}


def _warm_text(trained: dict) -> str | None:
    warm = trained.get("warm_start") or {}
    if trained.get("warm_started_from"):
        rows = warm.get("embedding_rows", {})
        kept = sum(r["kept"] for r in rows.values())
        tokens = sum(r["tokens"] for r in rows.values())
        return (f"  warm-started from {trained['warm_started_from']} ({kept} of {tokens} vocabulary "
                f"entries kept their rows)")
    if warm.get("skipped"):
        return f"  warm start skipped: {warm['skipped']}"
    return None


def _values_text(values: dict, only=None) -> str:
    return ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in values.items() if only is None or name in only)


def tuning_text(out_dir: str, model: str) -> str | None:
    """What the model's Tuner chose, the runner-up and the margin on the holdout (or, where the
    settings were kept, the best other trial and the holdout's noise it did not clear), and
    whether the search ran today or was reused (components/tuner); None without a Tuner."""
    from hap.components.tuner import executor as tuner_executor

    try:
        best = latest_artifact(out_dir, f"Tuner_{model}", "HyperParameters")
    except FileNotFoundError:
        return None
    props = best.custom_properties
    reason = props[tuner_executor.REASON].string_value
    trials = json.loads(props[tuner_executor.TRIALS].string_value or "[]") if tuner_executor.TRIALS in props else []
    if not trials:
        return f"  tuning: no completed trial ({reason})"
    chosen = next((t for t in trials if t.get("chosen")), trials[0])
    others = [t for t in trials if t is not chosen]
    count = f"{len(trials)} trial{'s' if len(trials) > 1 else ''}"
    text = f"  tuned: {_values_text(chosen['values'])} (holdout AUC {chosen['score']:.4f}"
    if others:
        other = others[0]
        differs = {k for k in {**chosen["values"], **other["values"]} if chosen["values"].get(k) != other["values"].get(k)}
        if other["score"] > chosen["score"]:
            noise = props[tuner_executor.NOISE].double_value if tuner_executor.NOISE in props else 0.0
            text += (f", the settings, kept: the best other trial, {_values_text(other['values'], differs)}, scored "
                     f"{other['score']:.4f}, within the holdout's noise {noise:.4f}")
        else:
            text += (f"; runner-up {_values_text(other['values'], differs)} {other['score']:.4f}, "
                     f"margin {chosen['score'] - other['score']:.4f}")
    return f"{text}; {count}; {reason})"


def blessing_failures(out_dir: str, model: str) -> list[dict]:
    """Why the newest Evaluator of `model` did not bless it (`validation_failures` of its TFMA
    validation result); empty when every threshold passed."""
    import tensorflow_model_analysis as tfma

    evaluation = latest_artifact(out_dir, f"Evaluator_{model}", "ModelEvaluation")
    return validation_failures(tfma.load_validation_result(evaluation.uri))


def validation_failures(result) -> list[dict]:
    """One entry per failed threshold of a TFMA ValidationResult, by contrast slice:
    `{"contrast", "kind": "floor", "value", "floor"}`, `{"contrast", "kind": "regression",
    "change", "tolerance"}` (against the last blessed model), else `{"contrast", "kind": "other",
    "text"}`."""
    from google.protobuf import text_format

    from hap.models import transformed

    failures = []
    for per_slice in result.metric_validations_per_slice:
        contrast = next((k.bytes_value.decode() for k in per_slice.slice_key.single_slice_keys
                         if k.column == transformed.CONTRAST), "every sample")
        for failure in per_slice.failures:
            value = failure.metric_value.double_value.value
            threshold = failure.metric_threshold
            if failure.metric_key.is_diff and threshold.HasField("change_threshold"):
                failures.append({"contrast": contrast, "kind": "regression", "change": value,
                                 "tolerance": -threshold.change_threshold.absolute.value})
            elif threshold.value_threshold.HasField("lower_bound"):
                failures.append({"contrast": contrast, "kind": "floor", "value": value,
                                 "floor": threshold.value_threshold.lower_bound.value})
            else:
                failures.append({"contrast": contrast, "kind": "other",
                                 "text": failure.message or text_format.MessageToString(failure, as_one_line=True)})
    for missing in result.missing_slices:
        failures.append({"contrast": text_format.MessageToString(missing, as_one_line=True), "kind": "other",
                         "text": "no eval samples in this slice"})
    if not result.validation_ok and not failures:
        failures.append({"contrast": "every sample", "kind": "other",
                         "text": text_format.MessageToString(result, as_one_line=True)})
    return failures


def push_summary(out_dir: str) -> dict:
    """What the newest Pusher execution did: `pushed` (bool), `state` (COMPLETE, or CACHED when
    its cache served it: then the version is an earlier run's), `version` and `destination`."""
    state = latest_by_node(out_dir).get("Pusher", {}).get("state")
    pushed = latest_artifact(out_dir, "Pusher", "PushedModel")
    props = pushed.custom_properties
    return {"state": state, "pushed": bool(props["pushed"].int_value) if "pushed" in props else False,
            "version": props["pushed_version"].string_value if "pushed_version" in props else None,
            "destination": props["pushed_destination"].string_value if "pushed_destination" in props else None}


def cascade_blessing(out_dir: str) -> dict | None:
    """The CascadeAssembler's own blessing of the newest run (both models blessed and the cascade,
    as routed, not worse than the last blessed one): `blessed` and its `reason`; None for a run
    whose assembler has no blessing output."""
    try:
        blessing = latest_artifact(out_dir, "CascadeAssembler", "ModelBlessing")
    except FileNotFoundError:
        return None
    props = blessing.custom_properties
    return {"blessed": bool(props["blessed"].int_value) if "blessed" in props else False,
            "reason": props["reason"].string_value if "reason" in props else ""}


def cascade_info(version_dir: str) -> dict:
    """What the CascadeAssembler stored beside a cascade SavedModel: its settings, features and
    FLOPs per part (serving/cascade.py INFO_FILE)."""
    from hap.serving import cascade

    return json.loads(storage.read_text(storage.join(version_dir, "assets.extra", cascade.INFO_FILE)))


# The request size the closing summary prices the cascade at: what retrieval hands pre-ranking in
# the contract's funnel (about 1000 candidates).
SUMMARY_CANDIDATES = 1000


def _auc_text(model: str, auc: dict) -> str:
    """The eval AUCs at the chosen epoch; the mean is over the model's own contrasts, which
    validation chose the epoch by."""
    from hap.data.sample_routing import MEAN_AUC, SAMPLE_ROUTING

    per_source = [f"EP vs {name.removeprefix(contrast_metric(''))} {value:.3f}" for name, value in auc.items()
                  if name != MEAN_AUC]
    if MEAN_AUC in auc:
        per_source.append(f"mean of {', '.join(SAMPLE_ROUTING[model].contrasts)} {auc[MEAN_AUC]:.3f}")
    return ", ".join(per_source)


def failure_text(failure: dict) -> str:
    """One failed threshold (`validation_failures`) as the summary names it."""
    where = f"EP vs {failure['contrast']}"
    if failure["kind"] == "floor":
        return f"{where} AUC {failure['value']:.3f} < floor {failure['floor']:g}"
    if failure["kind"] == "regression":
        return (f"{where} AUC {failure['change']:+.3f} against the last blessed model, more than the "
                f"{failure['tolerance']:g} allowed")
    return f"{where}: {failure['text']}"


def budget_lines(info: dict) -> list[str]:
    """The routing chosen within the serving budget (serving/budget.py), the runner-up and the
    margin, and whether the light model alone was all the budget allowed; [] without a budget."""
    record = info.get("budget")
    if not record:
        return []
    value = {o["label"]: o["value"] for o in record["options"]}
    within = sum(o["within"] for o in record["options"])
    text = (f"routing: {record['chosen']} chosen within {record['mflops']:g} MFLOPs per request of "
            f"{record['candidates']} candidates ({record['metric']} {value[record['chosen']]:.4f} on "
            f"{record['requests']} {record['part']} requests, a half of the eval day the cascade is not blessed on")
    if record["runner_up"]:
        text += f"; runner-up {record['runner_up']} {value[record['runner_up']]:.4f}, margin {record['margin']:.4f}"
    lines = [f"{text}; {within} of {len(record['options'])} options within the budget)"]
    if record["light_only"]:
        lines.append("  no routed option within the budget did better than the light model alone, which the "
                     "cascade serves")
    return lines


def flops_text(info: dict, n: int = SUMMARY_CANDIDATES) -> str | None:
    """The cascade's FLOPs per request of `n` candidates, with the share its routing policy sends
    to the heavy model on average, against the light model alone and the heavy one on all."""
    from hap.serving import flops, routing

    policy = info.get("settings", {}).get("routing")
    if policy is None or "flops" not in info:
        return None
    k = routing.routed_count(n, float(policy["fraction"]))
    # The adaptive policy routes a varying number, `fraction` of them on average (calibrate_margin).
    routed = f"{k} routed" if policy["kind"] != routing.ADAPTIVE else f"{k} routed on average"
    cost = flops.request_flops(info["flops"], n, k)
    return (f"cascade FLOPs per request of {n} candidates with {routed} to the heavy model: "
            f"{cost['cascade'] / 1e6:.1f} M (light model alone {cost['light_only'] / 1e6:.1f} M, heavy model on "
            f"every candidate {cost['heavy_all'] / 1e6:.1f} M)")


def summary_lines(out_dir: str, evaluated: bool = False) -> list[str]:
    """The closing summary of a finished run: per model the epoch validation chose, its AUCs and
    whether it was blessed (else each floor missed or regression, from TFMA's validation
    result); what was pushed and where; the cascade's FLOPs. `evaluated`: the caller measures
    the cascade's latency itself (hap demo)."""
    from hap.serving import model_versions

    lines = [text for text in (days_text(out_dir), drift_text(out_dir)) if text]
    not_blessed = []
    for model, trained in training_summary(out_dir).items():
        head = (f"{model}: epoch {trained['chosen_epoch']} of {trained['epochs_run']} chosen by validation "
                f"(eval AUC {_auc_text(model, trained['auc'])})")
        notes = [text for text in (tuning_text(out_dir, model), _warm_text(trained)) if text]
        if trained["blessed"]:
            lines += [f"{head}: blessed"] + notes
            continue
        not_blessed.append(model)
        lines.append(f"{head}: NOT blessed")
        lines += [f"  {failure_text(f)}" for f in blessing_failures(out_dir, model)] \
            or ["  (the Evaluator gave no reason)"]
        lines.append("  what to do: README, \"When a model is not blessed\" (e.g. relax a floor with --auc-floors)")
        lines += notes

    cascade = cascade_blessing(out_dir)
    if cascade is not None:
        lines += budget_lines(cascade_info(path_utils.serving_model_path(
            latest_artifact(out_dir, "CascadeAssembler", "Model").uri)))  # the run's cascade, pushed or not
    if cascade is not None and not not_blessed:
        lines.append(f"cascade: {'blessed' if cascade['blessed'] else 'NOT blessed'}"
                     + (f" ({cascade['reason']})" if cascade["reason"] else ""))
    serving = console.serving_base(out_dir)
    push = push_summary(out_dir)
    served = model_versions.complete_versions(serving)
    if push["pushed"] and push["state"] == "CACHED":
        lines.append(f"pushed: nothing new (the Pusher was served from cache); version {push['version']} of an "
                     f"earlier run is at {os.path.join(serving, push['version'])}")
    elif push["pushed"]:
        lines.append(f"pushed: cascade version {push['version']} to {os.path.join(serving, push['version'])}")
    else:
        why = (f"the {' and '.join(not_blessed)} model{'s were' if len(not_blessed) > 1 else ' was'} not blessed"
               if not_blessed else "the cascade was not blessed")
        kept = (f"; {serving} still holds version {served[-1]} of an earlier run" if served
                else "; there is no version to serve")
        lines.append(f"pushed: NOTHING, as {why}{kept}")
    if served:
        try:
            text = flops_text(cascade_info(os.path.join(serving, str(served[-1]))))
        except (OSError, ValueError, KeyError):
            text = None
        if text:
            lines.append(f"version {served[-1]}: {text}")
        if not evaluated:
            lines.append("latency, and quality against each model alone: hap evaluate (below)")
    return lines


def next_commands(out_dir: str, data_dir: str, hap: str = "hap", evaluated: bool = False) -> list[str]:
    """What to run next, as the user calls the command line (`hap`)."""
    from hap.serving import model_versions

    serving = console.serving_base(out_dir)
    lines = ["next:"]
    if model_versions.complete_versions(serving):
        lines.append(f"  {hap} serve {serving}    # TF Serving's gRPC API on 127.0.0.1:8500")
        lines.append(f"  {hap} query --data {data_dir}    # in a second terminal: one request, ranked")
        if not evaluated:
            lines.append(f"  {hap} evaluate --model_base_path {serving} --data {data_dir} "
                         f"--out {os.path.join(out_dir, 'evaluation')}")
    lines.append(f"  {hap} tensorboard {out_dir}    # the training curves")
    return lines
