"""Markdown reports and plots of `hap evaluate` and `hap benchmark`.

Plots are PNGs written beside the report with matplotlib's Agg backend (no display needed) and
linked by relative path, so a report folder can be moved or attached as a whole.
"""
from __future__ import annotations

import math
import os

import numpy as np

from hap.data import contract as c
from hap.data.sample_routing import MEAN_AUC, contrast_metric
from hap.evaluation.top_k_metrics import FUNNEL_KS, FUNNEL_TOP

SCORER_LABELS = {"cascade": "cascade scores", "light": "light alone", "heavy": "heavy alone"}
PER_SOURCE = tuple(contrast_metric(g) for g in c.NEGATIVE_GROUPS)


def pyplot():
    # Here, not at module level: the CLI imports this module (through evaluate.py) to build its
    # parser, which should not pay pyplot's import, and selecting the Agg
    # backend only when a report is drawn leaves the backend of a notebook importing hap alone.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out_dir: str, name: str) -> str:
    """Writes `fig` as out_dir/name and frees it; returns name."""
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=110)
    plt.close(fig)
    return name


def fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_PREFIXES = {contrast_metric(""): "AUC EP vs ", "hitrate@": "HitRate@", "recall@": "Recall@",
             "oracle_recall@": f"oracle top-{FUNNEL_TOP} Recall@", "ndcg@": "NDCG@"}


def metric_label(name: str) -> str:
    for prefix, label in _PREFIXES.items():
        if name.startswith(prefix):
            return label + name[len(prefix):]
    return {MEAN_AUC: f"AUC mean of {len(PER_SOURCE)} sources", "gauc": "GAUC (exposed)"}.get(name, name)


def _value(metric) -> float:
    return float("nan") if metric is None or metric["value"] is None else metric["value"]


# ---------------------------------------------------------------------------------------------
# hap evaluate


def _scorer_table(part: dict, names: list[str], scorers: list[str]) -> str:
    rows = []
    for name in names:
        cells = [metric_label(name)] + [fmt(_value(part["metrics"][s][name])) for s in scorers]
        m = part["metrics"][scorers[0]][name]
        counted = "pooled" if m["requests"] is None else str(m["requests"])
        rows.append(cells + [counted, m["note"] or ""])
    return table(["metric"] + [SCORER_LABELS[s] for s in scorers] + ["requests", "note"], rows)


def _bars(ax, groups: list[str], series: dict[str, list[float]], errors: dict[str, list[float]] | None = None):
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=label,
               yerr=None if errors is None else errors[label], capsize=3)
    ax.set_xticks(np.arange(len(groups)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels(groups, rotation=20, ha="right")


def _evaluation_plots(result: dict, per_request: list[dict], out_dir: str) -> list[tuple[str, str]]:
    plt = pyplot()
    scorers = list(result["logged"]["metrics"])
    logged = result["logged"]["metrics"]
    plots = []

    names = list(PER_SOURCE) + [MEAN_AUC, "gauc"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _bars(ax, [metric_label(n) for n in names], {SCORER_LABELS[s]: [_value(logged[s][n]) for n in names]
                                                 for s in scorers})
    ax.set_ylim(0.4, 1.0)
    ax.set_title(f"AUCs on the logged samples of day {result['eval_day']}")
    ax.legend()
    plots.append((_save(plt, fig, out_dir, "auc.png"), "Per-source AUC and GAUC"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("hitrate", "recall")):
        for s in scorers:
            ax.plot(result["ks"], [_value(logged[s][f"{metric}@{k}"]) for k in result["ks"]], marker="o",
                    label=SCORER_LABELS[s])
        ax.set_xlabel("K")
        ax.set_title(f"{'HitRate' if metric == 'hitrate' else 'Recall'}@K of clicks (logged candidates)")
        ax.set_xticks(result["ks"])
        ax.legend()
    plots.append((_save(plt, fig, out_dir, "topk.png"), "HitRate@K and Recall@K"))

    if "metrics" in result["funnel"]:
        funnel = result["funnel"]["metrics"]
        names = list(funnel[scorers[0]])
        fig, ax = plt.subplots(figsize=(6, 4))
        _bars(ax, [metric_label(n) for n in names],
              {SCORER_LABELS[s]: [_value(funnel[s][n]) for n in names] for s in scorers})
        ax.set_ylim(0, 1)
        ax.set_title(f"Full funnel: {result['funnel']['requests']} requests")
        ax.legend()
        plots.append((_save(plt, fig, out_dir, "funnel.png"), "Full-funnel quality"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    n = np.array([r["n"] for r in per_request])
    for s in scorers:
        left.scatter(n, [r[f"latency_ms_{s}"] for r in per_request], s=8, alpha=0.6, label=SCORER_LABELS[s])
        right.scatter(n, [r[f"flops_{s}"] / 1e6 for r in per_request], s=8, alpha=0.6, label=SCORER_LABELS[s])
    for ax, what in ((left, "latency per request (ms, in-process)"), (right, "MFLOPs per request")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("candidates N")
        ax.set_title(what)
        ax.legend()
    plots.append((_save(plt, fig, out_dir, "compute.png"), "Latency and FLOPs per request against N"))
    if "budget" in result:
        plots.append((_budget_plot(plt, result["budget"], out_dir), "Routing options against their FLOPs"))
    return plots


def _budget_plot(plt, record: dict, out_dir: str) -> str:
    """Each routing option's blessing metric against its MFLOPs, the budget and the choice."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for within, marker, label in ((True, "o", "within the budget"), (False, "x", "over the budget")):
        options = [o for o in record["options"] if o["within"] == within]
        ax.scatter([o["mflops"] for o in options], [o["value"] for o in options], marker=marker, label=label)
    chosen = next(o for o in record["options"] if o["label"] == record["chosen"])
    ax.scatter([chosen["mflops"]], [chosen["value"]], s=220, facecolors="none", edgecolors="red",
               label=f"chosen: {chosen['label']}")
    for o in record["options"]:
        ax.annotate(o["label"], (o["mflops"], o["value"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axvline(record["mflops"], color="grey", linestyle="--", label=f"budget {record['mflops']:g} MFLOPs")
    ax.set_xlabel(f"MFLOPs per request of {record['candidates']} candidates")
    ax.set_ylabel(f"{record['metric']} ({record['requests']} {record['part']} requests)")
    ax.set_title("Routing options on the half of the eval day that chose")
    ax.legend(fontsize=7)
    return _save(plt, fig, out_dir, "budget.png")


def budget_section(record: dict) -> list[str]:
    """The report's table of the routing options the pipeline chose among within its budget."""
    rows = [[o["label"], f"{o['mflops']:.1f}", fmt(o["value"], 4), "yes" if o["within"] else "no",
             "**chosen**" if o["label"] == record["chosen"] else ("runner-up" if o["label"] == record["runner_up"]
                                                                  else "")]
            for o in sorted(record["options"], key=lambda o: o["mflops"])]
    return ["## Routing within the serving budget", "",
            f"The CascadeAssembler chose the routing within {record['mflops']:g} MFLOPs per request of "
            f"{record['candidates']} candidates by {record['metric']} on {record['requests']} {record['part']} "
            "requests of the eval day, the half the cascade was not blessed on (serving/budget.py).", "",
            table(["routing", "MFLOPs", record["metric"], "within", ""], rows), ""]


def write_evaluation_report(result: dict, per_request: list[dict], out_dir: str) -> None:
    scorers = list(result["logged"]["metrics"])
    plots = _evaluation_plots(result, per_request, out_dir)
    settings = result["settings"]
    lines = [
        "# HAP cascade evaluation", "",
        f"- model: `{result['model']}` (routing policy {settings['routing']['kind']}, route fraction "
        f"{settings['routing']['fraction']:g}, output cut-off {settings['routing']['cutoff']}, scores combined "
        f"{settings['routing']['combine']}: serving/routing.py)",
        f"- data: `{result['data']}`, eval day {result['eval_day']}: {result['logged']['requests']} logged requests, "
        f"{result['logged']['samples']} samples",
        "- scorers: the `cascade` signature's ranking key `scores`, and the `light` and `heavy` signatures (one "
        "model alone on all N candidates); every request is one signature call, as TF Serving makes it", "",
        "## Logged samples of the eval day", "",
        _scorer_table(result["logged"], list(PER_SOURCE) + [MEAN_AUC, "gauc"]
                      + [f"{m}@{k}" for k in result["ks"] for m in ("hitrate", "recall")], scorers), "",
        "AUCs pool samples across requests (exact, ties count half); GAUC is the impression-weighted mean of "
        "per-request AUC over exposed samples; HitRate@K and Recall@K rank each request's logged candidates "
        f"(K = {', '.join(map(str, result['ks']))}: a logged request has about 30 candidates and one or two "
        "clicks, so larger K no longer tells scorers apart). 'requests' counts those averaged over, the note "
        "what was excluded. The cascade's pooled AUCs compare ranking keys across requests, and its key is a "
        "rank within a request ((N - rank) / N), not a probability; its per-request metrics (GAUC, HitRate, "
        "Recall) are the ones that measure the cascade as served.", "",
        "## Full funnel", "",
    ]
    funnel = result["funnel"]
    if "skipped" in funnel:
        lines += [f"Skipped: {funnel['skipped']}.", ""]
    else:
        lines += [f"{funnel['requests']} held-out requests, {funnel['rows']} retrieved candidates in all.", "",
                  _scorer_table(funnel, list(funnel["metrics"][scorers[0]]), scorers), "",
                  f"Recall@K: share of each request's top {result['funnel_top']} by oracle utility that the "
                  f"scorer keeps in its top K, K = {' and '.join(map(str, result['funnel_ks']))} (what pre-ranking "
                  "passes on); NDCG@K with the oracle utility as gain.", ""]
    if "budget" in result:
        lines += budget_section(result["budget"])
    lines += ["## Compute per request", ""]
    rows = []
    for part, summary in result["compute"].items():
        for s in scorers:
            rows.append([part, SCORER_LABELS[s], f"{summary['candidates_mean']:.0f}",
                         f"{summary['routed_mean']:.1f}" if s == "cascade" else "-",
                         f"{summary[s]['flops_mean'] / 1e6:.2f}", fmt(summary[s]["p50_ms"], 1),
                         fmt(summary[s]["p90_ms"], 1), fmt(summary[s]["p99_ms"], 1)])
    lines += [table(["requests", "scorer", "mean N", "mean K", "MFLOPs", "p50 ms", "p90 ms", "p99 ms"], rows), "",
              "FLOPs from the per-part counts stored with the model (serving/flops.py: light user tower once, "
              "light item tower and head per candidate, heavy model per routed candidate). Latency is the "
              "in-process wall time of one signature call and the copy of its outputs, Transform included, "
              "after one untimed warm-up call per signature; per request in `per_request.csv`.", ""]
    lines += [f"![{title}]({name})" for name, title in plots]
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# hap benchmark


def _mean_std(entry: dict, digits: int = 4) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def _quality_names(result: dict) -> list[str]:
    """The metrics of the main table: the hardest source, the mean of four, GAUC, the smallest
    and largest K, and the funnel's."""
    ks = result["ks"]
    names = [contrast_metric(c.EN), MEAN_AUC, "gauc", f"hitrate@{ks[0]}", f"recall@{ks[-1]}"]
    if result["funnel"]:
        names += [f"{m}@{k}" for k in FUNNEL_KS for m in ("oracle_recall", "ndcg")]
    return names


def _pareto_names(result: dict) -> list[str]:
    if result["funnel"]:
        return [f"{m}@{k}" for k in FUNNEL_KS for m in ("oracle_recall", "ndcg")]
    return ["gauc", MEAN_AUC, f"hitrate@{result['ks'][0]}", f"recall@{result['ks'][-1]}"]


def _latency(result: dict, key: str) -> dict:
    return result["compute"]["latency"][result["compute"]["architecture"][key]]


def _pareto_plot(result: dict, path: str) -> None:
    """Quality against FLOPs: one curve per routing family (its fractions), the uniform-scaling
    curve (light, the narrowed heavy models, heavy), and the other single models as points."""
    plt = pyplot()
    names = _pareto_names(result)
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    summary = result["summary"]
    families: dict[str, list[dict]] = {}
    for v in result["variants"]:
        if v["family"]:
            families.setdefault(v["family"], []).append(v)
    uniform = sorted((v for v in result["variants"] if v["key"] in ("c", "us", "um", "e")),
                     key=lambda v: summary[v["key"]]["flops"]["mean"])
    others = [v for v in result["variants"] if v["policy"] is None and v not in uniform] + \
             [v for v in result["variants"] if v["key"] == "f"]

    def point(key, name):
        return summary[key]["flops"]["mean"] / 1e6, summary[key][name]["mean"], summary[key][name]["std"] or 0.0

    for ax, name in zip(axes.ravel(), names):
        if uniform:
            xs, ys, es = zip(*(point(v["key"], name) for v in uniform))
            ax.errorbar(xs, ys, yerr=es, color="black", marker="s", lw=2, capsize=3,
                        label="uniform scaling: " + " -> ".join(f"({v['key']})" for v in uniform))
        # One colour per policy, one line style per routed model: no two families look alike.
        policies = list(dict.fromkeys(family.rsplit(", heavy ", 1)[0] for family in families))
        for family, members in families.items():
            policy, heavy_kind = family.rsplit(", heavy ", 1)
            members = sorted(members, key=lambda v: v["route_fraction"])
            xs, ys, es = zip(*(point(v["key"], name) for v in members))
            ax.errorbar(xs, ys, yerr=es, color=f"C{policies.index(policy) % 10}", marker="o", lw=1, capsize=2,
                        ls={"hard": "-", "all": "--"}.get(heavy_kind, ":"), label=f"HAP {family}")
        for j, v in enumerate(others):
            x, y, e = point(v["key"], name)
            ax.errorbar([x], [y], yerr=[e], fmt="*^Dv"[j % 4], color="grey", capsize=3, label=f"({v['key']}) {v['label']}")
        ax.set_xscale("log")
        ax.set_xlabel(f"MFLOPs per request (mean N = {result['compute']['candidates_mean']:.0f})")
        ax.set_title(metric_label(name))
    handles, legend_labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="lower center", ncol=3, fontsize="small")
    fig.suptitle(f"{os.path.basename(result['data'].rstrip('/'))}: quality against compute, "
                 f"mean ± std over seeds {result['seeds']}")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _conflict_plot(result: dict, path: str) -> bool:
    """Mean pairwise cosine of per-source gradients over training, per loss; False if no model
    logged any."""
    panels = (("light model", ["light_mixed_bce", "light_pooled_infonce", "light_ghcl", "light_ghcl_gradnorm",
                               "light_ghcl_ghm", "light_ghcl_pcgrad", "light_ghcl_sampled"]),
              ("heavy model on all samples", ["heavy_all_mixed_bce", "heavy_all_pooled_infonce", "heavy_all_ghcl",
                                              "heavy_all_ghcl_sampled"]),
              ("heavy on EP, EN, RN (EN vs RN)", ["heavy_hard_ghcl"]))
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    drawn = False
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            histories = [s["models"][name]["gradient_conflict"] for s in result["per_seed"] if name in s["models"]]
            histories = [h for h in histories if h]
            if not histories:
                continue
            length = min(len(h) for h in histories)
            steps = [h["step"] for h in histories[0][:length]]
            cos = np.array([[h["cos_mean"] for h in hist[:length]] for hist in histories])
            ax.plot(steps, cos.mean(axis=0), marker=".", label=result["models"][name]["loss"])
            ax.fill_between(steps, cos.mean(axis=0) - cos.std(axis=0), cos.mean(axis=0) + cos.std(axis=0), alpha=0.2)
            drawn = True
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("training step")
        ax.set_ylabel("mean pairwise cosine of per-source gradients")
        ax.set_title(f"Gradient conflict, {title}")
        ax.legend()
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def benchmark_table(result: dict) -> str:
    names = _quality_names(result)
    header = ["", "variant"] + [metric_label(n) for n in names] + ["MFLOPs / request", "latency p50 ms",
                                                                   "training s"]
    rows = []
    for v in result["variants"]:
        entry = result["summary"][v["key"]]
        rows.append([f"({v['key']})", v["label"]] + [_mean_std(entry[n]) for n in names]
                    + [f"{entry['flops']['mean'] / 1e6:.2f}", fmt(_latency(result, v["key"]).get("p50_ms"), 1),
                       _mean_std(entry["train_seconds"], 1)])
    return table(header, rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def claims_table(result: dict) -> str:
    """Which routing claims held on this dataset, per policy family (benchmark.routing_claims)."""
    if not result.get("claims"):
        return "No routing claims checked: they need funnel/ and the light (c) and heavy (e) models."
    rows = []
    for claim in result["claims"]:
        best = claim["best_within_budget"]
        rows.append([claim["family"], _yes(claim["no_harm"]), f"{claim['worst_recall200_diff_plus_std']:+.4f}",
                     "none" if best is None else f"({best['key']}), {best['flops_share_of_heavy']:.0%}",
                     "-" if best is None else ", ".join(f"{metric_label(m)} {r:.0%}" for m, r in best["recovered"].items()),
                     _yes(claim["recovers_gap"]), _yes(claim["beats_uniform"])])
    return table(["routing", "no harm at every fraction", "worst Recall@200 diff + std",
                  "best within 25% of heavy FLOPs", "gap recovered", "recovers >= 80%", "beats uniform scaling"], rows)


def losses_table(result: dict) -> str:
    """The loss comparison (benchmark.loss_claims): per single model, its per-source AUCs, their
    mean, the funnel's Recall@100 and NDCG@100 and its training time; per GHCL variant, its mean
    AUC gain over pooled_infonce and mixed_bce and which of the issue's criteria hold. Empty
    without the comparison's baselines."""
    claims = {entry["key"]: entry for entry in result.get("loss_claims") or []}
    if not claims:
        return ""
    summary = result["summary"]
    names = [n for n in (*PER_SOURCE, MEAN_AUC, "oracle_recall@100", "ndcg@100")
             if n in summary[result["variants"][0]["key"]]]
    rows = []
    for v in result["variants"]:
        if v["policy"] is not None:
            continue
        entry, claim = summary[v["key"]], claims.get(v["key"]) or {}
        gains = [f"{claim['gain_over_pooled']:+.4f}", f"{claim['gain_over_mixed']:+.4f}", _yes(claim["beats_pooled"]),
                 _yes(claim["beats_mixed"]), "n/a" if claim["keeps_recall"] is None else _yes(claim["keeps_recall"]),
                 _yes(claim["holds"])] if claim.get("holds") is not None else [""] * 6
        rows.append([f"({v['key']})", v["label"]] + [_mean_std(entry[n]) for n in names]
                    + [_mean_std(entry["train_seconds"], 1)] + gains)
    return table(["", "variant", *[metric_label(n) for n in names], "training s", "AUC mean - pooled",
                  "AUC mean - mixed_bce", "> 2 std over pooled", ">= 1.5 pt over mixed_bce",
                  "keeps Recall@100", "all hold"], rows)


def loss_gain_plot(results: dict[str, dict], path: str) -> bool:
    """Per dataset, each loss's gain over its model's pooled_infonce (mean ± std of the per-seed
    differences) in mean per-source AUC and funnel Recall@100, light and heavy panels; False when
    no result has the loss comparison."""
    models = [m for m in ("light", "heavy")
              if any(e["model"] == m for r in results.values() for e in r.get("loss_claims") or [])]
    if not models:
        return False
    panels = [(model, metric) for model in models for metric in (MEAN_AUC, "oracle_recall@100")]
    plt = pyplot()
    # A row per model the results compare (a light-only run has no empty heavy row).
    fig, axes = plt.subplots(len(models), 2, figsize=(15, 4.5 * len(models)), squeeze=False)
    datasets = list(results)
    drawn = False
    for ax, (model, metric) in zip(axes.ravel(), panels):
        labels: dict[str, str] = {}
        for result in results.values():
            for entry in result.get("loss_claims") or []:
                if entry["model"] == model and metric in entry["gains"]:
                    labels.setdefault(entry["key"], entry["label"])
        if not labels:
            ax.set_visible(False)
            continue

        def gain(name, key, i):
            found = [e["gains"][metric][i] for e in results[name].get("loss_claims") or []
                     if e["key"] == key and metric in e["gains"]]
            return found[0] if found else float("nan")

        _bars(ax, datasets, {f"({k}) {label}": [gain(n, k, 0) for n in datasets] for k, label in labels.items()},
              {f"({k}) {label}": [gain(n, k, 1) for n in datasets] for k, label in labels.items()})
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel(f"{metric_label(metric)} minus pooled_infonce's")
        ax.set_title(f"{model} model: gain over pooled_infonce, {metric_label(metric)}")
        ax.legend(fontsize="x-small")
        drawn = True
    fig.suptitle("Gain over pooled_infonce per regime (mean ± std of the per-seed differences)")
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def write_benchmark_report(result: dict, out_dir: str) -> None:
    _pareto_plot(result, os.path.join(out_dir, "pareto.png"))
    has_conflict = _conflict_plot(result, os.path.join(out_dir, "gradient_conflict.png"))
    compute = result["compute"]
    every = [n for n in result["summary"][result["variants"][0]["key"]] if n not in ("train_seconds", "flops")]
    full = table(["", *[metric_label(n) for n in every]],
                 [[f"({v['key']})"] + [_mean_std(result["summary"][v["key"]][n]) for n in every]
                  for v in result["variants"]])
    machine = result["machine"]
    routing = result["routing"]
    lines = [
        "# HAP benchmark", "",
        f"- data: `{result['data']}` (eval day {result['eval_day']}); pipeline run: `{result['run']}`",
        f"- seeds {result['seeds']}, epochs chosen by validation (at most {result['max_epochs']}) per model; "
        "mean ± std (population) over seeds",
        f"- routing: output cut-off {routing['cutoff']}, scores combined {routing['combine']} "
        "(serving/routing.py); the adaptive policy's margin is calibrated per seed on the light logits of the "
        f"{compute['part']} requests, without labels",
        f"- machine: {machine['cpus']} CPUs, {'GPU ' + ', '.join(machine['gpus']) if machine['gpus'] else 'no GPU'}; "
        f"load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])} at the "
        f"start, {', '.join(f'{x:.2f}' for x in machine['load_average_at_end'])} at the end",
        f"- wall time {result['seconds']['total']:.0f} s, of which the pipeline run "
        f"{result['seconds']['pipeline']:.0f} s",
        "", "## Routing claims", "", claims_table(result), "",
        "## Variants", "",
        benchmark_table(result), "",
        "Quality on the eval day's logged samples"
        + (f" and on funnel/ (Recall@K of the oracle top {FUNNEL_TOP}, NDCG@K by oracle utility, K = "
           f"{' and '.join(map(str, FUNNEL_KS))})" if result["funnel"]
           else "; the dataset has no funnel/, so the full-funnel metrics are skipped") + ". "
        f"FLOPs per request are the mean over the {compute['requests']} {compute['part']} requests "
        f"(mean N = {compute['candidates_mean']:.0f}) of what each variant computes on them (a cascade: the "
        "candidates it routed); latency is the in-process p50 of one request per call, measured once per "
        "architecture; training time is the wall time of trainer_module.train (a HAP row: both models).", "",
        *(["## Losses", "", losses_table(result), "",
            "Criteria (issue 13, benchmark.loss_claims): mean per-source AUC above pooled_infonce's by more "
            "than 2 standard deviations of both, above mixed_bce's by at least 1.5 points, and Recall@100 "
            "not below either baseline's beyond one standard deviation of the per-seed difference.", ""]
          if result.get("loss_claims") else []),
        "## Every metric", "", full, "",
        "## Plots", "", "![quality against compute](pareto.png)", "",
    ]
    if has_conflict:
        lines += ["![gradient conflict](gradient_conflict.png)", ""]
    with open(os.path.join(out_dir, "benchmark.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def write_benchmark_summary(results: dict[str, dict], path: str) -> None:
    """One page over several datasets' benchmarks: which routing claims held where."""
    lines = ["# HAP benchmark over datasets", ""]
    for name, result in results.items():
        lines += [f"## {name}", "", f"`{result['data']}`, seeds {result['seeds']}: report `{name}/report/benchmark.md`",
                  "", claims_table(result), "", f"![{name}]({name}/report/pareto.png)", ""]
    if loss_gain_plot(results, os.path.join(os.path.dirname(path), "loss_gain.png")):
        lines += ["## Losses: gain over pooled_infonce", "", "![gain over pooled_infonce](loss_gain.png)", ""]
        for name, result in results.items():
            lines += [f"### {name}", "", losses_table(result), ""]
    held = {name: [c["family"] for c in r.get("claims") or [] if c["no_harm"] and c["recovers_gap"] and c["beats_uniform"]]
            for name, r in results.items()}
    lines += ["## Where every claim held", ""]
    lines += [f"- {name}: {', '.join(families) if families else 'no routing family met all three claims'}"
              for name, families in held.items()]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
