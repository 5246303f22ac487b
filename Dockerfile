# The pipeline image for Kubeflow Pipelines / Vertex AI Pipelines: every component of the spec
# `hap compile kubeflow` writes runs in it, started by TFX's kubeflow_v2_run_executor. It is
# built from the same constraints.txt as the development environment:
#
#   docker build -t REGISTRY/hap-pipeline:cpu .
#   docker build --build-arg EXTRAS=gpu -t REGISTRY/hap-pipeline:gpu .
#
# The GPU build needs no CUDA base image: the `gpu` extra (tensorflow[and-cuda]) brings CUDA and
# cuDNN as pip wheels, and the node's NVIDIA driver is mounted in by the GPU device plugin.
#
# The same image is the Beam SDK container of Dataflow, Flink or Spark workers
# (--sdk_container_image / --environment_config): they need `hap` importable for Transform's
# preprocessing_fn, and Beam's boot program as entrypoint. Kubeflow ignores the entrypoint: the
# compiled spec names its own command.
FROM python:3.11.7-slim-bookworm
COPY --from=apache/beam_python3.11_sdk:2.60.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# An editable install at a fixed place: the compiled spec names the curated schema by its path
# in the image (pipeline/kubeflow_runner.py, IMAGE_SCHEMA).
WORKDIR /hap
COPY . .
# pyfarmhash and crcmod ship no wheels for Python 3.11 and build from source: the compiler is
# needed for the install only.
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && pip install 'pip==24.2' \
    && pip install --ignore-requires-python -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}" \
    && pip check \
    && apt-get purge -y --auto-remove g++ && rm -rf /var/lib/apt/lists/*
