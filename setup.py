"""HAP: Heterogeneity-Aware Adaptive Pre-ranking, a TFX pipeline.

The repository keeps one folder per role (pipeline/, components/, models/, serving/, schema/) as
in the TFX template; they install as subpackages of `hap` so that no generic top-level name such
as `models` or `pipeline` lands in site-packages.
"""
from setuptools import find_packages, setup

ROLE_PACKAGES = ["data", "pipeline", "components", "models", "serving", "schema", "evaluation"]

setup(
    name="hap-preranking",
    version="0.1.0",
    description="Heterogeneity-Aware Adaptive Pre-ranking: a TFX pipeline for recommender pre-ranking",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.12",
    packages=["hap"] + [f"hap.{p}" for p in ROLE_PACKAGES] + [
        f"hap.{p}.{sub}" for p in ROLE_PACKAGES for sub in find_packages(where=p)],
    package_dir={"hap": "hap", **{f"hap.{p}": p for p in ROLE_PACKAGES}},
    package_data={"hap.schema": ["*.pbtxt", "*.yaml"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tensorflow-transform==1.16.0",
        "tensorflow-data-validation==1.16.1",
        "tensorflow-model-analysis==0.47.1",
        "tensorflow-recommenders==0.7.3",
        "tensorflow-serving-api==2.16.1",
        "tf-keras==2.16.0",
        "apache-beam==2.60.0",
        "numpy==1.26.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.8",
        "scikit-learn>=1.3",
        # `hap serve`'s Prometheus metrics page (serving/metrics.py).
        "prometheus-client>=0.26",
        # TFX's KubeflowV2DagRunner and its container entrypoint import the KFP PipelineSpec
        # proto; 0.7 is the last release built for protobuf 4 (0.8 needs protobuf 6).
        "kfp-pipeline-spec>=0.7,<0.8",
    ],
    extras_require={
        # pytest-xdist: `make test` runs two workers, one per core (Makefile).
        # pytest 9.2 ignores the group that pytest-xdist 3.8 writes into a test's id, so
        # `--dist loadgroup` spreads a group over both workers (pytest-dev/pytest-xdist#1386).
        "dev": ["pytest>=8,<9.2", "pytest-xdist>=3"],
        # The GPU pipeline image: TensorFlow with its CUDA libraries as pip wheels.
        "gpu": ["tensorflow[and-cuda]==2.16.2"],
        # Airflow 2 needs older Werkzeug, OpenTelemetry, importlib-metadata, rich and wrapt than the
        # TFX set pins, so it installs into its own environment with constraints-airflow.txt
        # (`make airflow-env`), never with constraints.txt.
        "airflow": ["apache-airflow==2.10.5", "apache-airflow-providers-fab==1.5.3"],
        # Airflow as a cluster runs it (docs/deploying.md): Celery workers with a Redis broker,
        # and Airflow's own database in PostgreSQL.
        "celery": ["apache-airflow-providers-celery==3.13.1", "psycopg2-binary==2.9.13"],
        # Data and artifacts on S3 (hap/storage.py): TensorFlow's s3:// file system and Beam's.
        "s3": ["tensorflow-io==0.37.1", "boto3>=1.34"],
    },
    entry_points={"console_scripts": ["hap=hap.cli:run"]},
)
