"""Executor of CascadeAssembler: rebuilds the two Keras models from the Trainers' SavedModels,
wraps them and the Transform graph in `CascadeModule`, and saves it with warm-up requests.

The SavedModel is written to a temporary folder beside its destination and renamed into
place, so a failed run leaves no half-written model for Pusher to find. When both models were
blessed, the cascade is then validated as a cascade (`validate`) against the last blessed one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_executor
from tfx.components.util import model_utils
from tfx.types import artifact_utils
from tfx.utils import path_utils

from hap import storage
from hap.components.contract_example_gen.executor import TRAIN, read_days
from hap.data import contract as c
from hap.evaluation import evaluate
from hap.evaluation.popularity import ItemPopularity
from hap.models import heavy, light, preprocessing  # noqa: F401  (registers the Keras classes)
from hap.serving import budget, cascade, flops, warmup
from hap.tree import parse

BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"


def _single(artifacts: List[types.Artifact]) -> types.Artifact:
    return artifact_utils.get_single_instance(artifacts)


def source_commit() -> str | None:
    """The git commit of the HAP source tree this process runs, where it runs from one (the
    editable install, the pipeline image built from a clone), else None."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        done = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def assemble(transform_dir: str, light_dir: str, heavy_dir: str, custom_config: dict,
             settings: cascade.CascadeSettings, model_name: str, export_dir: str,
             provenance: dict | None = None, data_root: str | None = None) -> cascade.CascadeSettings:
    """Writes the cascade SavedModel of the given Trainer outputs to `export_dir` (atomically);
    `provenance` ({"hap_settings": the whole effective tree, "source_commit"}) goes into its
    info file beside the cascade's own settings. With a budget (`settings.budget.mflops`), the
    routing is chosen within it on `data_root`'s eval day (serving/budget.py) and the choice is
    recorded in the info file (`budget`). Returns the settings the cascade was saved with."""
    features = preprocessing.feature_set_from_config(custom_config)
    tft_output = tft.TFTransformOutput(transform_dir)
    light_model = tf.keras.models.load_model(light_dir, compile=False)
    heavy_model = tf.keras.models.load_model(heavy_dir, compile=False)
    parts = flops.model_flops(light_model, heavy_model)

    def module_with(cascade_settings):
        return cascade.CascadeModule(light_model, heavy_model, tft_output.transform_features_layer(),
                                     tft_output.raw_feature_spec(), features, cascade_settings)

    module, chosen = module_with(settings), {}
    if settings.budget.mflops is not None:
        policy, record = budget.choose_routing(module, features, data_root, settings, parts)
        settings = dataclasses.replace(settings, routing=policy)
        module, chosen = module_with(settings), {"budget": record}
    staging = f"{export_dir.rstrip('/')}.tmp"
    storage.rmtree(staging)
    module.save(staging)
    warmup.write_warmup(staging, features, model_name)
    info = {"settings": dataclasses.asdict(settings), "flops": parts,
            "features": [f.to_yaml_dict() for f in features.features], **chosen, **(provenance or {})}
    with storage.open(storage.join(staging, "assets.extra", cascade.INFO_FILE), "w") as f:
        f.write(json.dumps(info, indent=1))
    storage.replace(staging, export_dir)
    return settings


def validate(export_dir: str, baseline_dir: str | None, data_root: str, tolerance: float,
             max_requests: int | None = None, popularity_days: list[int] | None = None,
             popularity_margin: float = 0.0, half: int | None = None) -> dict:
    """The cascade's blessing metric on the eval day (at most `max_requests` of its requests, the
    same for both: evaluate.RequestSample) against the last blessed cascade's on the same data:
    {"metric", "part", "value", "requests", "baseline", "baseline_name", "regressed", "reason"}.

    Without a last blessed cascade that can be scored on today's data (a first run, or one whose
    features changed), the baseline is item popularity on the training days `popularity_days`
    (evaluation/popularity.py), scored on the same requests, which the cascade must beat by more
    than `popularity_margin` (decision 0018); with `popularity_days` None, there is nothing to
    compare with. `half`: only that half of the requests (evaluate.RequestSample), the one a
    routing chosen within a budget was not chosen on."""
    out = {"baseline": None, "baseline_name": None, "regressed": False}
    base, why_not = None, "no blessed cascade to compare with"
    if baseline_dir is not None:
        try:
            base = evaluate.cascade_quality(baseline_dir, data_root, max_requests, half=half)
        except (c.ContractError, ValueError, FileNotFoundError) as e:
            why_not = f"the last blessed cascade cannot be scored on this data: {e}"
    popularity = (ItemPopularity.from_days(data_root, c.load_features(data_root), popularity_days)
                  if base is None and popularity_days is not None else None)
    quality = evaluate.cascade_quality(export_dir, data_root, max_requests, popularity=popularity, half=half)
    out.update(metric=quality["metric"], part=quality["part"], value=quality["value"], requests=quality["requests"])
    measured = f"{quality['metric']} on {quality['requests']} {quality['part']} requests {quality['value']:.4f}"
    if base is not None:
        out.update(baseline=base["value"], baseline_name="the last blessed cascade")
        if math.isnan(quality["value"]) or math.isnan(base["value"]):
            out["reason"] = f"{quality['metric']} is not measurable on this data"
        else:
            out["regressed"] = quality["value"] < base["value"] - tolerance
            out["reason"] = (f"{measured} is more than {tolerance} below the last blessed cascade's {base['value']:.4f}"
                             if out["regressed"] else f"{measured} against the last blessed cascade's "
                             f"{base['value']:.4f}")
        return out
    if popularity is None:
        out["reason"] = why_not
        return out
    value = quality["popularity"]
    out.update(baseline=value, baseline_name="item popularity")
    days = f"item popularity's (days {_days_text(popularity_days)})"
    if math.isnan(quality["value"]) or math.isnan(value):
        out["reason"] = f"{why_not}; {quality['metric']} is not measurable on this data, so not compared with {days}"
    else:
        out["regressed"] = not quality["value"] > value + popularity_margin
        if popularity_margin >= 0:
            by = f" by more than {popularity_margin}" if popularity_margin else ""
            verdict = f"{'does not beat' if out['regressed'] else 'beats'} {days} {value:.4f}{by}"
        else:
            verdict = f"is {-popularity_margin} or more below" if out["regressed"] else f"is less than {-popularity_margin} below"
            verdict += f" {days} {value:.4f}"
        out["reason"] = f"{why_not}; {measured} {verdict}"
    return out


def _days_text(days: list[int]) -> str:
    days = sorted(days)
    if not days:
        return "none"
    return f"{days[0]}-{days[-1]}" if len(days) > 1 and days == list(range(days[0], days[-1] + 1)) \
        else ", ".join(map(str, days))


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        blessed = all(model_utils.is_model_blessed(_single(input_dict[k]))
                      for k in ("light_blessing", "heavy_blessing"))
        settings = parse(cascade.CascadeSettings, json.loads(exec_properties["settings"]), "cascade")
        model = _single(output_dict["model"])
        export_dir = path_utils.serving_model_path(model.uri)
        assemble(
            transform_dir=_single(input_dict["transform_graph"]).uri,
            light_dir=path_utils.serving_model_path(_single(input_dict["light_model"]).uri),
            heavy_dir=path_utils.serving_model_path(_single(input_dict["heavy_model"]).uri),
            custom_config=json.loads(exec_properties["custom_config"]),
            settings=settings, model_name=exec_properties["model_name"], export_dir=export_dir,
            provenance={"hap_settings": json.loads(exec_properties["hap_settings"]), "source_commit": source_commit()},
            data_root=exec_properties["data_root"])

        blessing = _single(output_dict["blessing"])
        if blessed:
            baseline = input_dict.get("baseline_model") or []
            examples = input_dict.get("examples") or []
            check = validate(export_dir, path_utils.serving_model_path(baseline[0].uri) if baseline else None,
                             exec_properties["data_root"], settings.tolerance, settings.blessing_requests,
                             popularity_days=read_days(_single(examples).uri)[TRAIN] if examples else None,
                             popularity_margin=settings.popularity_margin,
                             half=budget.BLESSING_HALF if settings.budget.mflops is not None else None)
            blessed = not check["regressed"]
            blessing.set_string_custom_property("cascade_metric", check["metric"])
            blessing.set_float_custom_property("cascade_value", check["value"])
            blessing.set_int_custom_property("cascade_requests", check["requests"])
            if check["baseline"] is not None:
                blessing.set_float_custom_property("baseline_value", check["baseline"])
                blessing.set_string_custom_property("baseline_name", check["baseline_name"])
            blessing.set_string_custom_property("reason", check["reason"])
        else:
            blessing.set_string_custom_property("reason", "a model of the cascade was not blessed by its Evaluator")
        with tf.io.gfile.GFile(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), "w") as f:
            f.write("")
        blessing.set_int_custom_property("blessed", int(blessed))
        blessing.set_string_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
        blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
        logging.info("CascadeAssembler: %s (%s)", "blessed" if blessed else "NOT blessed; Pusher will skip it",
                     blessing.get_string_custom_property("reason"))
