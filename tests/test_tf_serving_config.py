"""The TF Serving deployment files in serving/tf_serving/ agree with each other and with TF
Serving's config protos."""
import os
import re

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

HERE = os.path.join(os.path.dirname(__file__), "..", "serving", "tf_serving")


def _compose():
    with open(os.path.join(HERE, "docker-compose.yml")) as f:
        return yaml.safe_load(f)["services"]


def _flags(service) -> dict:
    return dict(re.match(r"--([^=]+)=(.*)", arg).groups() for arg in service["command"])


def _model_config(name):
    with open(os.path.join(HERE, name)) as f:
        return text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())


@pytest.mark.parametrize("service", ["hap", "hap-items"])
def test_each_server_runs_tf_serving_2_16_on_a_reserved_gpu_with_existing_config_files(service):
    spec = _compose()[service]
    assert spec["image"].startswith("tensorflow/serving:2.16") and spec["image"].endswith("-gpu")
    devices = spec["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    mounts = dict(v.rsplit(":", 2)[1:] for v in spec["volumes"])  # host paths may hold ':' (${VAR:?msg})
    assert mounts.get("/models") == "ro" and mounts.get("/config") == "ro"
    for flag, value in _flags(spec).items():
        if value.startswith("/config/"):
            assert os.path.isfile(os.path.join(HERE, value[len("/config/"):])), f"{service}: --{flag}={value}"
    config = _model_config(_flags(spec)["model_config_file"].split("/")[-1])
    for model in config.model_config_list.config:
        assert model.base_path == "/models/hap", "the Pusher writes to <base>/hap/<version>/"
        assert model.model_platform == "tensorflow"


def test_batching_is_off_for_the_cascade_and_on_only_for_the_per_candidate_server():
    services = _compose()
    assert _flags(services["hap"])["enable_batching"] == "false"
    assert "batching_parameters_file" not in _flags(services["hap"])
    items = _flags(services["hap-items"])
    assert items["enable_batching"] == "true" and items["batching_parameters_file"].endswith("batching_parameters.txt")
    names = {_model_config(f).model_config_list.config[0].name for f in ("models.config", "models_batching.config")}
    assert names == {"hap", "hap_items"}, "the batching server must not answer as the cascade's model name"


def test_batching_parameters_pad_to_sizes_within_the_maximum():
    with open(os.path.join(HERE, "batching_parameters.txt")) as f:
        text = f.read()
    maximum = int(re.search(r"max_batch_size \{ value: (\d+) \}", text).group(1))
    allowed = [int(v) for v in re.findall(r"allowed_batch_sizes: (\d+)", text)]
    # TF Serving requires increasing allowed sizes ending at max_batch_size.
    assert allowed == sorted(allowed) and allowed[-1] == maximum
    assert "pad_variable_length_inputs { value: true }" in text
