"""The `hap` command line.

    hap data simulate --out DIR [--requests N] [--seed S] [--format csv|tfrecord] [--regime NAME]
                      [--cross-strength C] [--history-strength H] [--click-noise P] [--click-sparsity S]
    hap data simulate --out DIR --append-day [--drift X] [--click-drift L]
    hap data validate DIR
    hap schema derive --features features.yaml --out schema.pbtxt
    hap run --data DIR --out DIR [SETTINGS] [--window-days W] [--warm-start] [--light-loss L] [--heavy-loss L]
            [--max-epochs E] [--auc-floors JSON] [--beam-arg ARG ...]
    hap config show [SETTINGS]
    hap tensorboard OUT
    hap compile kubeflow --out FILE --image IMAGE --data-root URI --pipeline-root URI [--gpu-image IMAGE] [SETTINGS]
    hap serve (MODEL_BASE_PATH | --model_config_file FILE) [--port 8500] [--rest_api_port 8501] [--host 127.0.0.1]
              [--monitoring_config_file FILE]  (TF Serving's flag names; hyphenated ones too)
    hap query (--data DIR [--request-id ID] | --json FILE) [--server HOST:PORT] [--model NAME]
    hap evaluate --model_base_path PATH --data DIR --out DIR [--k 1 3 5] [--overwrite] [SETTINGS]
    hap benchmark --data DIR [DIR ...] --out DIR [--run RUN] [--variants all|routing|losses] [--only KEY ...]
                  [--seeds 0 1 2] [SETTINGS]
    hap demo [--out DIR] [SETTINGS]

SETTINGS: --config FILE (default $HAP_CONFIG) and repeatable --set KEY=VALUE over hap/defaults.yaml
(docs/settings.md); `hap config show` prints the effective tree and where each value came from.

Heavy imports (TensorFlow, TFX) happen inside the subcommands that need them, so `--help` and
CSV simulation start fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import hap  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from hap import storage
from hap.data import contract
from hap.data.simulator import REGIMES, SimulationConfig
from hap.evaluation import defaults as evaluation_defaults
from hap.tree import default_value


def _simulate(args) -> int:
    from hap.data import simulator

    if args.append_day:
        if args.overwrite:
            raise ValueError("--append-day adds to the dataset at --out; it overwrites nothing")
        start = time.time()
        counts = simulator.append_day(args.out, simulator.DayDrift(network=args.drift, click=args.click_drift),
                                      progress=not args.quiet)
        print(f"appended day {counts['day']}: {counts['samples']} samples of {counts['requests']} requests "
              f"to {os.path.join(args.out, contract.SAMPLES_DIR)} in {time.time() - start:.1f}s")
        return 0
    if args.drift or args.click_drift:
        raise ValueError("--drift and --click-drift describe an appended day: give --append-day too")
    given_knobs = {knob: getattr(args, knob) for knob in
                   ("cross_strength", "history_strength", "click_noise", "click_sparsity")
                   if getattr(args, knob) is not None}
    cfg = simulator.config_for_regime(args.regime, requests=args.requests, seed=args.seed, days=args.days,
                                      funnel_requests=args.funnel_requests, **given_knobs)
    start = time.time()
    counts = simulator.simulate(args.out, cfg, fmt=args.format, overwrite=args.overwrite,
                                progress=not args.quiet)
    print(f"wrote {counts['samples']} samples of {counts['requests']} requests and "
          f"{counts['funnel_rows']} funnel rows of {counts['funnel_requests']} requests "
          f"to {args.out} in {time.time() - start:.1f}s")
    return 0


def _validate(args) -> int:
    from hap.data import validator

    report = validator.validate(args.dataset, rank_cutoff=args.rank_cutoff,
                                prerank_cutoff=args.prerank_cutoff, max_per_check=args.max_per_check)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in report.errors:
        print(f"error: {e}")
    print(("OK: " if report.ok else "INVALID: ") + report.summary())
    return 0 if report.ok else 1


def _derive_schema(args) -> int:
    from hap.schema import derive

    try:
        features = contract.parse_features(derive.load_yaml(args.features), args.features)
    except contract.ContractError as e:
        print(e, file=sys.stderr)
        return 1
    derive.write_schema(derive.derive_schema(features), args.out)
    print(f"wrote {args.out}")
    return 0


def _json_option(option: str, raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{option}: not JSON ({e}): {raw!r}") from None


def _hap_command() -> str:
    """How the user called the command line (e.g. .venv/bin/hap), for the commands we suggest."""
    called = sys.argv[0] if sys.argv else ""
    return called if os.path.basename(called) == "hap" else "hap"


def _run_options(args) -> list[tuple[str, object, str]]:
    """`hap run`'s shorthand options as settings keys (hap/settings.py), each with its name."""
    options = []
    if getattr(args, "max_epochs", None):
        options += [(f"{m}.trainer.max_epochs", args.max_epochs, "--max-epochs") for m in ("light", "heavy")]
    for model in ("light", "heavy"):
        if getattr(args, f"{model}_loss", None):
            options.append((f"{model}.trainer.loss", getattr(args, f"{model}_loss"), f"--{model}-loss"))
    if getattr(args, "auc_floors", None):
        floors = _json_option("--auc-floors", args.auc_floors)
        if not isinstance(floors, dict):
            raise ValueError(f"--auc-floors: expected a mapping of model to {{source: floor}}, got {floors!r}")
        options += [(f"{model}.auc_floors", by_source, "--auc-floors") for model, by_source in floors.items()]
    for name, key, value in (("beam_arg", "beam.args", getattr(args, "beam_arg", None)),
                             ("window_days", "data.window_days", getattr(args, "window_days", None)),
                             ("keep_runs", "retention.keep_runs", getattr(args, "keep_runs", None)),
                             ("max_epochs", None, getattr(args, "max_epochs", None))):
        option = "--" + name.replace("_", "-")
        # Refused here, before the settings module loads TensorFlow.
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{option} must be a whole number >= 1, got {value}")
        if value is not None and key:
            options.append((key, value, option))
    for flag, key, value in (("warm_start", "warm_start", True), ("accept_drift", "drift.accept", True),
                             ("no_cache", "enable_cache", False)):
        if getattr(args, flag, False):
            options.append((key, value, "--" + flag.replace("_", "-")))
    return options


def _settings(args, options=()):
    """The effective settings of a command: defaults, --config (or HAP_CONFIG), HAP_SET, the
    command's own options and --set; a bad key or value fails here, before anything runs."""
    options = [*_run_options(args), *options]
    from hap import settings

    return settings.load(args.config, args.set or (), options=options)


# Raised before any component runs: the user's data or options, told as `hap: error: ...`.
_USER_ERRORS = (contract.ContractError, FileExistsError, FileNotFoundError, ValueError, ConnectionError)


def _pipeline(out, data: str, run_dir: str, settings, log: str) -> bool:
    """Runs the pipeline with one console line per component; False, with the failed component
    and its traceback on the console, when it fails."""
    from hap.pipeline import console

    start = time.time()
    try:
        with out.step("loading TFX and TensorFlow"):
            from hap.pipeline import local_runner
        local_runner.run(data, run_dir, settings, console=out)
    except Exception as e:  # noqa: BLE001  (a failed component: shown, with its traceback)
        if not out.components and isinstance(e, _USER_ERRORS):
            raise
        console.report_failure(out, e, log)
        return False
    cached = sum(c["state"] == "cached" for c in out.components)
    out.line(f"pipeline finished in {time.time() - start:.0f} s ({len(out.components) - cached} components run, "
             f"{cached} from cache); outputs under {run_dir}")
    return True


def _run(args) -> int:
    from hap.pipeline import console, retention

    settings = _settings(args).settings
    log = console.log_path(args.out)
    with console.quiet_console(log) as out:
        out.line(f"hap run: {args.data} into {args.out}; every library's messages go to {log}")
        if not _pipeline(out, args.data, args.out, settings, log):
            return 1
        from hap.pipeline import run_report

        for line in run_report.summary_lines(args.out) + run_report.next_commands(args.out, args.data, _hap_command()):
            out.line(line)
        if settings.retention.keep_runs:
            out.line(retention.prune(args.out, settings.retention.keep_runs).summary(args.out))
    return 0


def _compile_kubeflow(args) -> int:
    from hap.pipeline import kubeflow_runner

    if args.gpu_image is None and (args.gpu_type is not None or args.gpus is not None):
        raise ValueError("--gpu-type and --gpus apply to the Trainers' --gpu-image; give --gpu-image too")
    options = [(key, value, option) for key, value, option in (
        ("kubeflow.gpu_type", args.gpu_type, "--gpu-type"), ("kubeflow.gpus", args.gpus, "--gpus"),
        ("kubeflow.beam_args", args.kubeflow_beam_arg, "--beam-arg")) if value is not None]
    settings = _settings(args, options).settings
    pipeline = kubeflow_runner.build(args.data_root, args.pipeline_root, settings, serving_model_dir=args.serving_dir,
                                     features_path=args.features, schema_path=args.schema,
                                     gpu=args.gpu_image is not None)
    job = kubeflow_runner.compile_pipeline(pipeline, args.out, image=args.image, gpu_image=args.gpu_image)
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"wrote {args.out}: pipeline {job['displayName']!r}, {len(tasks)} tasks")
    return 0


def _prune(args) -> int:
    from hap.pipeline import retention

    pruned = retention.prune(args.out, args.keep_runs, dry_run=args.dry_run)
    print(pruned.summary(args.out, args.dry_run))
    for uri in pruned.artifacts if args.dry_run else ():
        print(f"  {uri}")
    return 0


def _tensorboard(args) -> int:
    from hap.pipeline import console  # not local_runner: printing a command needs no TensorFlow

    dirs = console.tensorboard_logdirs(args.out)
    spec = ",".join(f"{model}:{path}" for model, path in dirs.items() if os.path.isdir(path))
    if not spec:
        print(f"no training logs under {args.out}; run `hap run --out {args.out}` first", file=sys.stderr)
        return 1
    print(f"tensorboard --logdir_spec {spec}")
    print("then open http://localhost:6006 (loss terms per group, per_source_auc, gradient_conflict)")
    return 0


def _serve(args) -> int:
    import logging
    import signal
    import threading

    from hap.serving import metrics, server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.model_base_path and args.model_base_path_option:
        raise ValueError("give the model base path once: as an argument or as --model_base_path")
    args.model_base_path = args.model_base_path or args.model_base_path_option
    if args.model_config_file:
        if args.model_base_path:
            raise ValueError("give a model base path or --model-config-file, not both")
        config = server.load_model_config(args.model_config_file)
    elif args.model_base_path:
        config = server.ModelConfig(args.model_name, args.model_base_path)
    else:
        raise ValueError("give a model base path (e.g. OUT/serving/hap) or --model-config-file")
    if args.rest_api_port < 0:
        raise ValueError(f"--rest-api-port must be a port number, or 0 for no REST API; got {args.rest_api_port}")
    metrics_path = None
    if args.monitoring_config_file:
        metrics_path = metrics.load_monitoring_config(args.monitoring_config_file)
        if metrics_path and not args.rest_api_port:
            raise ValueError("--monitoring-config-file turns on the metrics page, which is served on the REST port: "
                             "give --rest-api-port too")
    running = server.start(config.base_path, config.name, host=args.host, port=args.port,
                           max_message_bytes=args.max_message_mb * 1024 * 1024, poll_seconds=args.poll_seconds,
                           version_policy=config.version_policy, version_labels=config.version_labels,
                           rest_api_port=args.rest_api_port or None, metrics_path=metrics_path)
    versions = sorted(v for v, st in running.model_server.statuses().items() if st.state == server.State.AVAILABLE)
    if not running.rest_server:
        rest = " (no REST API; --rest-api-port 8501 adds it)"
    elif metrics_path:
        rest = f", REST on {args.host}:{running.rest_port} with metrics at {metrics_path}"
    else:
        rest = f", REST on {args.host}:{running.rest_port} (no metrics page; --monitoring-config-file adds it)"
    print(f"hap serve: model {config.name!r} version(s) {versions}: gRPC on {args.host}:{running.port}{rest}. "
          "TF Serving's APIs; a development server: production uses TF Serving, see docs/serving.md. "
          "Ctrl-C or SIGTERM stops it.", flush=True)

    def drain(signum, frame):
        # Stopping blocks until the requests in flight finish: not in a signal handler.
        print(f"hap serve: {signal.Signals(signum).name}: no new requests; draining those in flight "
              f"(up to {args.drain_seconds:g} s), then exiting", flush=True)
        threading.Thread(target=running.stop, args=(args.drain_seconds,), daemon=True).start()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    running.wait_for_termination()
    print("hap serve: stopped", flush=True)
    return 0


def _query(args) -> int:
    import grpc

    from hap.serving import client
    from hap.serving import request as rq

    stub = client.connect(args.server)
    try:
        layout = rq.RequestLayout.from_signature_def(client.signature_def(stub, args.model, "cascade"))
        if args.json:
            inputs, where = layout.load_json(args.json), args.json
        else:
            request_id, rows = client.request_rows(args.data, args.request_id)
            inputs, where = layout.from_rows(rows), f"request {request_id} of {args.data}"
        start = time.time()
        outputs = client.predict(stub, args.model, "cascade", inputs)
    except grpc.RpcError as e:
        print(f"hap query: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    n = len(outputs["scores"])
    print(f"{where}: answered in {1000 * (time.time() - start):.1f} ms by {args.server}")
    ids = inputs.get("item_id", [str(i) for i in range(n)])
    print(client.format_ranking(client.ranking(outputs, ids)[:args.top], n))
    return 0


def _evaluate(args) -> int:
    from hap.pipeline import console

    settings = _settings(args).settings
    # Beside the report folder, which is written whole or not at all.
    log = f"{os.path.normpath(args.out)}.log"
    start = time.time()
    with console.quiet_console(log) as out:
        out.line(f"hap evaluate: {args.model_base_path} on {args.data} into {args.out}; every library's messages "
                 f"go to {log}")
        with out.step("loading TensorFlow"):
            from hap.evaluation import evaluate
        result = evaluate.evaluate(args.model_base_path, args.data, args.out, ks=args.k or settings.evaluation.ks,
                                   overwrite=args.overwrite, progress=False if args.quiet else out.err)
        out.line(f"evaluated {result['model']} on {result['logged']['requests']} logged requests"
                 + ("" if "skipped" in result["funnel"] else f" and {result['funnel']['requests']} funnel requests")
                 + f" in {time.time() - start:.0f}s: {os.path.join(args.out, 'report.md')}")
        from hap.pipeline import run_report

        for line in run_report.budget_lines(result):
            out.line(line)
    return 0


def _benchmark(args) -> int:
    from hap.pipeline import console

    if args.run and len(args.data) > 1:
        raise ValueError("--run reuses one dataset's pipeline run: give one --data with it")
    names = [os.path.basename(os.path.normpath(d)) for d in args.data]
    if len(set(names)) != len(names):
        raise ValueError(f"the datasets' folder names must differ (they name the outputs): {names}")
    tree = _settings(args).settings
    # Beside OUT, as `hap evaluate`'s: a refused option leaves nothing in OUT.
    log = f"{os.path.normpath(args.out)}.log"
    with console.quiet_console(log) as out:
        out.line(f"hap benchmark: {', '.join(args.data)} into {args.out}; every library's messages go to {log}")
        with out.step("loading TFX and TensorFlow"):
            from hap.evaluation import benchmark, report
        settings = dict(seeds=args.seeds or tree.benchmark.seeds, max_epochs=args.max_epochs,
                        route_fractions=args.route_fractions or tree.benchmark.route_fractions,
                        ks=args.k or tree.evaluation.ks, which=args.variants, only=args.only,
                        latency_requests=args.latency_requests or tree.benchmark.latency_requests,
                        overwrite=args.overwrite, progress=False if args.quiet else out.err, settings=tree)
        if len(args.data) == 1:
            result = benchmark.benchmark(args.data[0], args.out, run_dir=args.run, **settings)
            out.line(report.benchmark_table(result))
            out.line(report.claims_table(result))
            out.line(f"benchmark finished in {result['seconds']['total']:.0f}s: "
                     f"{os.path.join(args.out, 'report', 'benchmark.md')}")
            return 0
        results = {}
        for name, data in zip(names, args.data):
            out.line(f"== {name}: {data}")
            results[name] = benchmark.benchmark(data, os.path.join(args.out, name), **settings)
            out.line(report.claims_table(results[name]))
        summary = os.path.join(args.out, "summary.md")
        report.write_benchmark_summary(results, summary)
        out.line(f"benchmark of {len(results)} datasets finished: {summary}")
    return 0


def _compare(out, run_dir: str, data: str, demo_dir: str) -> None:
    """`hap demo`'s last step: `hap evaluate` on the cascade the run pushed, into
    DEMO/evaluation, and the light model, the cascade and the heavy model side by side on the
    console and in DEMO/summary.md."""
    from hap.evaluation import evaluate
    from hap.pipeline import console

    evaluation = os.path.join(demo_dir, "evaluation")
    with out.step("evaluating the cascade"):
        result = evaluate.evaluate(console.serving_base(run_dir), data, evaluation, overwrite=True, progress=False)
    out.line()
    for line in console.side_by_side_lines(result):
        out.line(line)
    summary, report = os.path.join(demo_dir, "summary.md"), os.path.join(evaluation, "report.md")
    with open(summary, "w", encoding="utf-8") as f:
        f.write(console.side_by_side_markdown(result, report, demo_dir))
    out.line(f"this table: {summary}; every metric, with plots: {report}")
    out.line()


def _demo(args) -> int:
    from hap.data import simulator, validator
    from hap.pipeline import console

    start = time.time()
    settings = _settings(args).settings
    data, run_dir = os.path.join(args.out, "data"), os.path.join(args.out, "run")
    evaluation = os.path.join(args.out, "evaluation")
    log = console.log_path(run_dir)
    with console.quiet_console(log) as out:
        out.line(f"hap demo: the default dataset in {data}, the pipeline run in {run_dir}, the evaluation of the "
                 f"pushed cascade in {evaluation}; every library's messages go to {log}")
        if not os.path.exists(data):
            with out.step("simulating the data"):
                counts = simulator.simulate(data, SimulationConfig(), progress=False)
            out.line(f"{'':8}{counts['samples']} samples of {counts['requests']} requests, "
                     f"{counts['funnel_rows']} funnel rows of {counts['funnel_requests']} requests")
        with out.step("validating the data"):
            report = validator.validate(data)
        out.line(f"{'':8}" + ("OK: " if report.ok else "INVALID: ") + report.summary())
        if not report.ok:
            return 1
        if not _pipeline(out, data, run_dir, settings, log):
            return 1
        from hap.pipeline import run_report
        from hap.serving import model_versions

        for line in run_report.summary_lines(run_dir, evaluated=True):
            out.line(line)
        if model_versions.complete_versions(console.serving_base(run_dir)):
            _compare(out, run_dir, data, args.out)
        for line in run_report.next_commands(run_dir, data, _hap_command(), evaluated=True):
            out.line(line)
        out.line(f"demo finished in {time.time() - start:.0f} s")
    return 0


def _config_show(args) -> int:
    from hap import settings

    loaded = _settings(args)
    print("\n".join(settings.show_lines(loaded)))
    return 0


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="a settings file, the same tree as hap/defaults.yaml (default: $HAP_CONFIG if set)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="one setting, e.g. --set cascade.routing.fraction=0.3 (repeatable; docs/settings.md, "
                             "`hap config show`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hap", description="Heterogeneity-Aware Adaptive Pre-ranking.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="simulate or validate hybrid-sample datasets").add_subparsers(
        dest="data_command", required=True)
    sim = data.add_parser("simulate", help="write a simulated dataset that follows the contract")
    defaults = SimulationConfig()
    sim.add_argument("--out", required=True, help="output dataset directory")
    sim.add_argument("--requests", type=int, default=defaults.requests, help="training requests over all days")
    sim.add_argument("--seed", type=int, default=defaults.seed)
    sim.add_argument("--days", type=int, default=defaults.days)
    sim.add_argument("--funnel-requests", type=int, default=defaults.funnel_requests,
                     help="held-out full-funnel requests on the last day (0: no funnel/)")
    sim.add_argument("--format", choices=["csv", "tfrecord"], default="csv")
    sim.add_argument("--regime", choices=list(REGIMES), default="default",
                     help="named setting of the knobs below, which override it (data/simulator.py documents "
                          "regimes and knobs)")
    sim.add_argument("--cross-strength", type=float, metavar="C",
                     help="multiplier of the user x category cross term of the hidden utility, >= 0")
    sim.add_argument("--history-strength", type=float, metavar="H",
                     help="multiplier of the history-affinity term of the hidden utility, >= 0")
    sim.add_argument("--click-noise", type=float, metavar="P",
                     help="share of exposed click labels replaced by a coin flip, in [0, 1)")
    sim.add_argument("--click-sparsity", type=float, metavar="S",
                     help="shift subtracted from the click logit when clicks are drawn, >= 0")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    sim.add_argument("--append-day", action="store_true",
                     help="add the next day to the simulated dataset at --out (the feed continued; its settings "
                          "come from OUT/simulation.json, the other options above are not used)")
    sim.add_argument("--drift", type=float, default=0.0, metavar="X",
                     help="with --append-day: share in [0, 1] of the new day's requests arriving over the network "
                          "fewest users have (context feature c_network)")
    sim.add_argument("--click-drift", type=float, default=0.0, metavar="L",
                     help="with --append-day: added to the new day's click logit (its click base rate moves)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_simulate)

    val = data.add_parser("validate", help="check a dataset against the contract")
    val.add_argument("dataset", help="dataset directory (features.yaml, samples/, optional funnel/)")
    val.add_argument("--rank-cutoff", type=int, default=contract.RANK_CUTOFF,
                     help="ranking negatives have rank_pos >= this")
    val.add_argument("--prerank-cutoff", type=int, default=contract.PRERANK_CUTOFF,
                     help="pre-ranking negatives have prerank_pos >= this")
    val.add_argument("--max-per-check", type=int, default=20,
                     help="print at most this many findings of one check in one file (all are counted)")
    val.set_defaults(func=_validate)

    schema = sub.add_parser("schema", help="TFDV schemas").add_subparsers(dest="schema_command", required=True)
    der = schema.add_parser("derive", help="derive a TFDV schema from a features.yaml")
    der.add_argument("--features", required=True, help="path to features.yaml")
    der.add_argument("--out", required=True, help="schema.pbtxt to write")
    der.set_defaults(func=_derive_schema)

    run = sub.add_parser("run", help="run the TFX pipeline on a contract dataset (LocalDagRunner)")
    run.add_argument("--data", required=True, help="contract dataset directory")
    run.add_argument("--out", required=True, help="output directory (artifacts, ML Metadata, pushed models)")
    # The names live in models/loss_names.py (LOSS_NAMES): the settings refuse an unknown one,
    # naming the valid ones, before TensorFlow loads.
    loss_help = ("ghcl (default), mixed_bce, pooled_infonce or a GHCL rule such as ghcl_pcgrad "
                 "(docs/decisions/0002-ghcl-default-loss.md)")
    run.add_argument("--light-loss", metavar="LOSS", help=loss_help)
    run.add_argument("--heavy-loss", metavar="LOSS", help=loss_help)
    run.add_argument("--max-epochs", type=int,
                     help="most training epochs of both models (the epoch is chosen by validation)")
    run.add_argument("--beam-arg", action="append",
                     help="a Beam pipeline argument, e.g. --beam-arg=--direct_running_mode=multi_processing")
    run.add_argument("--auc-floors", metavar="JSON",
                     help='relax or raise per-source AUC floors, e.g. \'{"light": {"EN": 0.5}}\'')
    run.add_argument("--no-cache", action="store_true", help="re-run every component")
    run.add_argument("--window-days", type=int, metavar="W",
                     help="train on the W days before the newest day, which evaluates (default: every earlier day)")
    run.add_argument("--warm-start", action="store_true",
                     help="start each model from the last blessed model of its kind trained on other data "
                          "(README, \"Day by day\")")
    run.add_argument("--accept-drift", action="store_true",
                     help="the newest day's drift from the last accepted day is real: go on and make it the baseline")
    run.add_argument("--keep-runs", type=int, metavar="N",
                     help="after a successful run, delete the artifacts that neither the last N successful runs nor "
                          "any run after them used, as `hap prune` (default: keep everything)")
    _add_settings_options(run)
    run.set_defaults(func=_run)

    config = sub.add_parser("config", help="the settings tree").add_subparsers(dest="config_command", required=True)
    show = config.add_parser("show", help="print the effective settings, each with where its value came from")
    _add_settings_options(show)
    show.set_defaults(func=_config_show)

    comp = sub.add_parser("compile", help="compile the pipeline for an orchestrator").add_subparsers(
        dest="compile_command", required=True)
    kfp = comp.add_parser("kubeflow", help="a Kubeflow Pipelines 2 / Vertex AI PipelineSpec (KubeflowV2DagRunner)",
                          description="Every path is read on the cluster: use gs:// or a mounted volume.")
    kfp.add_argument("--out", required=True, help="file to write: .json (PipelineJob) or .yaml (PipelineSpec)")
    kfp.add_argument("--image", required=True, help="the pipeline image every component runs in (Dockerfile)")
    kfp.add_argument("--data-root", required=True, help="the contract dataset, as the cluster reads it")
    kfp.add_argument("--pipeline-root", required=True, help="where the components write their artifacts")
    kfp.add_argument("--serving-dir", help="model base path the Pusher writes to (default: PIPELINE_ROOT/serving)")
    kfp.add_argument("--features", help="local copy of the dataset's features.yaml (default: the default feature set)")
    kfp.add_argument("--schema", help="curated schema of a non-default feature set, as the cluster reads it")
    kfp.add_argument("--gpu-image", help="image the Trainers run in, with a GPU attached (the Dockerfile's GPU build)")
    kfp.add_argument("--gpu-type", help="accelerator type of the Trainers, as Vertex AI names it "
                                        "(default: the setting kubeflow.gpu_type)")
    kfp.add_argument("--gpus", type=int, help="GPUs per Trainer (default: the setting kubeflow.gpus)")
    kfp.add_argument("--beam-arg", action="append", dest="kubeflow_beam_arg",
                     help="a Beam pipeline argument, e.g. --beam-arg=--runner=DataflowRunner "
                          "(default: the setting kubeflow.beam_args, multi-process DirectRunner in each pod)")
    _add_settings_options(kfp)
    kfp.set_defaults(func=_compile_kubeflow)

    prune = sub.add_parser("prune", help="delete the artifacts of a day-by-day output directory that only older runs "
                                         "used (README, \"Day by day\")")
    prune.add_argument("--out", required=True, help="the --out directory of `hap run`")
    prune.add_argument("--keep-runs", type=int, required=True, metavar="N",
                       help="keep what the last N successful runs, and every run after them, read or wrote")
    prune.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    prune.set_defaults(func=_prune)

    tb = sub.add_parser("tensorboard", help="print how to open the training logs of a run in TensorBoard")
    tb.add_argument("out", help="the --out directory of `hap run`")
    tb.set_defaults(func=_tensorboard)

    serve = sub.add_parser("serve", help="serve a pushed model over TF Serving's gRPC and REST APIs (development server)")
    # TF Serving's own flag names are accepted beside the hyphenated ones, so a command line
    # written for tensorflow_model_server works here (and the other way round).
    serving = lambda key: default_value(f"serving.{key}")  # noqa: E731
    serve.add_argument("model_base_path", nargs="?", help="the folder of version folders, e.g. OUT/serving/hap")
    serve.add_argument("--model_base_path", "--model-base-path", dest="model_base_path_option", metavar="PATH",
                       help="the same, as TF Serving's flag")
    serve.add_argument("--model_name", "--model-name", default=serving("model_name"),
                       help="the model's name in requests (default: serving.model_name)")
    serve.add_argument("--model_config_file", "--model-config-file",
                       help="a TF Serving model config file (one model): base path, version policy, version labels")
    serve.add_argument("--host", default=serving("host"), help="address to bind (default: this machine only)")
    serve.add_argument("--port", type=int, default=serving("port"), help="gRPC port (TF Serving's default, 8500)")
    serve.add_argument("--rest_api_port", "--rest-api-port", type=int, default=serving("rest_api_port"),
                       help="port of TF Serving's REST API (and of the metrics page --monitoring_config_file turns "
                            "on); 0 (the default, as in TF Serving) for none")
    serve.add_argument("--monitoring_config_file", "--monitoring-config-file",
                       help="a TF Serving monitoring config file: prometheus_config { enable: true path: ... } serves "
                            "the Prometheus metrics page on the REST port; without it, as in TF Serving, there is "
                            "none (serving/tf_serving/monitoring.config turns it on)")
    serve.add_argument("--max-message-mb", type=int, default=serving("max_message_mb"),
                       help="largest request or response")
    serve.add_argument("--file_system_poll_wait_seconds", "--poll-seconds", dest="poll_seconds", type=float,
                       default=serving("file_system_poll_wait_seconds"), help="how often to look for new versions")
    serve.add_argument("--drain-seconds", type=float, default=serving("drain_seconds"),
                       help="on SIGTERM or SIGINT, how long requests in flight may take to finish")
    serve.set_defaults(func=_serve)

    query = sub.add_parser("query", help="send one request to a served cascade and print the ranking")
    source = query.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a contract dataset: the request comes from it")
    source.add_argument("--json", help='a JSON request: {"request": {...}, "candidates": [{...}, ...]}')
    query.add_argument("--request-id", help="which request of --data (default: the first of funnel/, else samples/)")
    query.add_argument("--server", default=f"{default_value('serving.host')}:{default_value('serving.port')}",
                       help="TF Serving or `hap serve` gRPC address")
    query.add_argument("--model", "--model_name", dest="model", default=default_value("serving.model_name"),
                       help="the model's name on the server (default: serving.model_name)")
    query.add_argument("--top", type=int, default=20, help="rows to print")
    query.set_defaults(func=_query)


    ev = sub.add_parser("evaluate", help="evaluate a pushed cascade request by request on a dataset's eval day")
    ev.add_argument("--model_base_path", "--model-base-path", required=True,
                    help="a model base path such as OUT/serving/hap (its newest version), or one version folder")
    ev.add_argument("--data", required=True, help="contract dataset: its last day of samples/, and funnel/ if any")
    ev.add_argument("--out", required=True, help="report folder (metrics.json, report.md, plots)")
    ev.add_argument("--k", type=int, nargs="+", help="K of HitRate@K and Recall@K (default: evaluation.ks)")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_settings_options(ev)
    ev.set_defaults(func=_evaluate)

    bench = sub.add_parser("benchmark", help="train and compare HAP with its baselines on one or more datasets")
    bench.add_argument("--data", required=True, nargs="+",
                       help="contract dataset(s); with several, each gets OUT/<its folder name>/ and OUT/summary.md "
                            "says which routing claims held where")
    bench.add_argument("--out", required=True, help="output folder: run/ (the pipeline run) and report/")
    bench.add_argument("--variants", choices=evaluation_defaults.VARIANT_SETS, default="all",
                       help="routing: light, uniform-scaling and cascade variants; losses: the loss comparison")
    bench.add_argument("--only", nargs="+", metavar="KEY",
                       help="only these variants of the set, by key (e.g. --variants losses --only a b c c-bce)")
    bench.add_argument("--run", help="reuse this finished `hap run` output of --data instead of running the pipeline")
    bench.add_argument("--seeds", type=int, nargs="+", help="training seeds, mean ± std over them "
                                                          "(default: benchmark.seeds)")
    bench.add_argument("--max-epochs", type=int, help="most training epochs of every model (default: the trainer's)")
    bench.add_argument("--route-fractions", type=float, nargs="+",
                       help="shares of candidates re-scored by the heavy model, swept for every routing policy "
                            "(default: benchmark.route_fractions)")
    bench.add_argument("--k", type=int, nargs="+", help="K of HitRate@K and Recall@K (default: evaluation.ks)")
    bench.add_argument("--latency-requests", type=int,
                       help="requests timed per architecture (default: benchmark.latency_requests)")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing OUT/report")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_settings_options(bench)
    bench.set_defaults(func=_benchmark)

    demo = sub.add_parser("demo", help="the main job on the embedded default data")
    demo.add_argument("--out", default="demo", help="working directory")
    _add_settings_options(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (contract.ContractError, FileExistsError, FileNotFoundError, ValueError, ConnectionError,
            storage.StorageError) as e:
        print(f"hap: error: {e}", file=sys.stderr)
        return 2


def run() -> None:
    """The `hap` command: main(), leaving as hap/storage.py says a process that used S3 must."""
    storage.exit(main())


if __name__ == "__main__":
    run()
