"""Executor of CascadeAssembler: rebuilds the two Keras models from the Trainers' SavedModels,
wraps them and the Transform graph in `CascadeModule`, and saves it with warm-up requests.

The SavedModel is written to a temporary folder beside its destination and renamed into
place, so a failed run leaves no half-written model for Pusher to find.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, List

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.components.util import model_utils
from tfx.types import artifact_utils
from tfx.utils import path_utils

from hap.models import heavy, light, preprocessing  # noqa: F401  (registers the Keras classes)
from hap.serving import cascade, flops, warmup

BLESSED_FILE, NOT_BLESSED_FILE = "BLESSED", "NOT_BLESSED"


def _single(artifacts: List[types.Artifact]) -> types.Artifact:
    return artifact_utils.get_single_instance(artifacts)


def assemble(transform_dir: str, light_dir: str, heavy_dir: str, custom_config: dict,
             settings: cascade.CascadeSettings, model_name: str, export_dir: str) -> None:
    """Writes the cascade SavedModel of the given Trainer outputs to `export_dir` (atomically)."""
    features = preprocessing.feature_set_from_config(custom_config)
    tft_output = tft.TFTransformOutput(transform_dir)
    light_model = tf.keras.models.load_model(light_dir, compile=False)
    heavy_model = tf.keras.models.load_model(heavy_dir, compile=False)
    module = cascade.CascadeModule(light_model, heavy_model, tft_output.transform_features_layer(),
                                   tft_output.raw_feature_spec(), features, settings)
    staging = f"{export_dir.rstrip('/')}.tmp"
    if os.path.exists(staging):
        shutil.rmtree(staging)
    module.save(staging)
    warmup.write_warmup(staging, features, model_name)
    info = {"settings": dataclasses.asdict(settings), "flops": flops.model_flops(light_model, heavy_model),
            "features": [f.to_yaml_dict() for f in features.features]}
    with open(os.path.join(staging, "assets.extra", cascade.INFO_FILE), "w") as f:
        json.dump(info, f, indent=1)
    os.replace(staging, export_dir)


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        blessed = all(model_utils.is_model_blessed(_single(input_dict[k]))
                      for k in ("light_blessing", "heavy_blessing"))
        settings = cascade.CascadeSettings(
            route_fraction=float(exec_properties["route_fraction"]), k_out=int(exec_properties["k_out"]),
            max_candidates=int(exec_properties["max_candidates"]))
        model = _single(output_dict["model"])
        assemble(
            transform_dir=_single(input_dict["transform_graph"]).uri,
            light_dir=path_utils.serving_model_path(_single(input_dict["light_model"]).uri),
            heavy_dir=path_utils.serving_model_path(_single(input_dict["heavy_model"]).uri),
            custom_config=json.loads(exec_properties["custom_config"]),
            settings=settings, model_name=exec_properties["model_name"],
            export_dir=path_utils.serving_model_path(model.uri))

        blessing = _single(output_dict["blessing"])
        with tf.io.gfile.GFile(os.path.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), "w") as f:
            f.write("")
        blessing.set_int_custom_property("blessed", int(blessed))
        blessing.set_string_custom_property("current_model", model.uri)
        blessing.set_int_custom_property("current_model_id", model.id)
        if not blessed:
            logging.info("CascadeAssembler: not blessed, as one of the models was not; Pusher will skip it")
