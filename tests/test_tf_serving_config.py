"""The TF Serving deployment files in serving/tf_serving/ read as TF Serving reads them: each
config through its text-format proto (an unknown field or a value of the wrong type is an error
there, as at the server's start), and the compose file's services agree with the configs, with
each other (ports, GPU memory) and with the SavedModel's signatures."""
import os
import re

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
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


def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters as TF Serving 2.16 defines it
    (tensorflow_serving/servables/tensorflow/session_bundle_config.proto), which the
    tensorflow-serving-api wheel does not ship."""
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(name="session_bundle_config.proto", package="tensorflow.serving",
                                               syntax="proto3", dependency=[wrappers.name])
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate([
            ("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
            ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
            ("thread_pool_name", "StringValue")], start=1):
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{kind}")
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def _batching_parameters():
    with open(os.path.join(HERE, "batching_parameters.txt")) as f:
        return text_format.Parse(f.read(), _batching_parameters_class()())


GPU_SERVICES, CPU_SERVICES = ["hap", "hap-items"], ["hap-cpu"]


@pytest.mark.parametrize("service", GPU_SERVICES + CPU_SERVICES)
def test_each_server_runs_tf_serving_2_16_with_existing_config_files(service):
    spec = _compose()[service]
    assert spec["image"].startswith("tensorflow/serving:2.16")
    assert spec["image"].endswith("-gpu") == (service in GPU_SERVICES)
    assert ("deploy" in spec) == (service in GPU_SERVICES), "a CPU service reserves no GPU"
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


def test_the_proto_reader_refuses_what_tf_serving_refuses():
    cls = _batching_parameters_class()
    # The padding flag is a plain bool: the wrapper form the file once had fails at the server's start.
    with pytest.raises(text_format.ParseError):
        text_format.Parse("pad_variable_length_inputs { value: true }", cls())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size: 4096", cls())


def test_batching_parameters_pad_to_sizes_within_the_maximum_and_never_pad_lengths():
    parameters = _batching_parameters()
    allowed = list(parameters.allowed_batch_sizes)
    # TF Serving requires increasing allowed sizes ending at max_batch_size.
    assert allowed == sorted(allowed) and allowed[-1] == parameters.max_batch_size.value
    assert parameters.batch_timeout_micros.value > 0 and parameters.num_batch_threads.value >= 1
    # TF Serving pads a variable-length input with each tensor's first value, not an empty
    # string; the batched signatures have no such input, so nothing is padded.
    assert not parameters.pad_variable_length_inputs


def test_the_gpu_services_memory_fractions_add_up_on_each_gpu():
    services = _compose()
    by_gpu = {}
    for name in GPU_SERVICES:
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        for gpu in device["device_ids"]:
            by_gpu.setdefault(gpu, []).append(float(_flags(services[name])["per_process_gpu_memory_fraction"]))
    assert by_gpu and all(sum(fractions) <= 1.0 for fractions in by_gpu.values()), by_gpu


def test_services_that_run_together_listen_on_distinct_host_ports():
    services = _compose()
    for together in (["hap", "hap-items"], ["hap-cpu"]):
        ports = [p.split(":")[0] for name in together for p in services[name]["ports"]]
        assert len(ports) == len(set(ports)), together
    # The CPU service is the GPU one's stand-in: the same model, ports and config.
    assert services["hap-cpu"]["ports"] == services["hap"]["ports"]
    assert _flags(services["hap-cpu"])["model_config_file"] == _flags(services["hap"])["model_config_file"]
    assert set(services["hap"]["profiles"]).isdisjoint(services["hap-cpu"]["profiles"])
