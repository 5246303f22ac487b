"""hap/storage.py, the one file-system layer for data and artifact paths: its calls on local paths
(the object store's are tests/test_cluster.py's), and a check that the modules that read or
write data and artifacts reach files through it only."""
import ast
import gzip
import os

import pytest

from hap import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The modules that read a dataset, an artifact or a model base path, any of which may be a URI.
# Not here, and why: pipeline/run_report.py, console.py, local_runner.py and
# evaluation/evaluate.py's outputs are the run directory itself (`--out`: ML Metadata's SQLite
# file, the log, the derived schema, the evaluation report), which is local by design;
# pipeline/pipeline.py reads HAP's own source tree for the cache fingerprint.
THROUGH_STORAGE = ("components/cascade_assembler/executor.py", "components/contract_example_gen/executor.py",
                   "components/request_grouper/executor.py", "data/reader.py", "data/contract.py",
                   "serving/model_versions.py", "serving/warmup.py", "pipeline/retention.py",
                   "models/trainer_module.py")
_OS_CALLS = {"listdir", "makedirs", "replace", "rename", "remove", "walk", "scandir", "stat"}
_OS_PATH_CALLS = {"exists", "isdir", "isfile", "getsize", "getmtime"}
_MODULES = {"glob", "shutil", "gzip"}


def local_file_calls(source: str) -> list[str]:
    """Builtin open, os file calls, os.path checks and glob/shutil/gzip calls in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append(f"{node.lineno}: open")
        elif isinstance(func, ast.Attribute):
            owner = func.value
            if isinstance(owner, ast.Name) and ((owner.id == "os" and func.attr in _OS_CALLS) or owner.id in _MODULES):
                found.append(f"{node.lineno}: {owner.id}.{func.attr}")
            elif (isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) and owner.value.id == "os"
                  and owner.attr == "path" and func.attr in _OS_PATH_CALLS):
                found.append(f"{node.lineno}: os.path.{func.attr}")
    return found


def test_the_check_finds_each_kind_of_local_file_call():
    source = "import os, glob\nopen('x')\nos.listdir('d')\nos.path.isfile('f')\nglob.glob('*')\nos.path.join('a')\n"
    assert local_file_calls(source) == ["2: open", "3: os.listdir", "4: os.path.isfile", "5: glob.glob"]


@pytest.mark.parametrize("module", THROUGH_STORAGE)
def test_data_and_artifacts_are_reached_through_the_storage_layer(module):
    with open(os.path.join(ROOT, module), encoding="utf-8") as f:
        assert local_file_calls(f.read()) == [], f"{module} reaches files without hap/storage.py"


def test_files_round_trip_with_gzip_read_transparently(tmp_path):
    text = str(tmp_path / "a" / "rows.csv.gz")
    storage.makedirs(os.path.dirname(text))
    with storage.open(text, "wb") as f:
        f.write(gzip.compress("a,b\n1,é\n".encode()))
    with storage.open(text) as f:
        assert f.read() == "a,b\n1,é\n"
    with storage.open(text, "rb") as f:
        assert f.read() == "a,b\n1,é\n".encode()
    storage.write_text(str(tmp_path / "a" / "x.json"), "{}")
    assert storage.listdir(str(tmp_path / "a")) == ["rows.csv.gz", "x.json"], "no staging file is left behind"
    assert storage.glob(str(tmp_path / "a" / "*.json")) == [str(tmp_path / "a" / "x.json")]
    assert storage.size(str(tmp_path / "a" / "x.json")) == 2 and storage.isfile(str(tmp_path / "a" / "x.json"))


def test_replace_moves_a_directory_onto_its_empty_target(tmp_path):
    """As the CascadeAssembler writes its model: staged beside the artifact's (empty) folder,
    then moved onto it."""
    staging, target = str(tmp_path / "v.tmp"), str(tmp_path / "v")
    storage.makedirs(os.path.join(staging, "assets"))
    storage.write_text(os.path.join(staging, "assets", "info"), "new")
    storage.makedirs(target)
    storage.replace(staging, target)
    assert not storage.exists(staging)
    assert [(os.path.relpath(d, target), files) for d, _, files in storage.walk(target)] == [(".", []), ("assets", ["info"])]


def test_uris_are_joined_as_uris_and_local_paths_made_absolute():
    assert storage.join("s3://bucket/hap", "serving", "hap") == "s3://bucket/hap/serving/hap"
    assert storage.absolute("s3://bucket/x") == "s3://bucket/x"
    assert storage.absolute("rel") == os.path.abspath("rel")
    storage.check_reachable("relative/local/path")  # a local path is never refused here


def test_beam_gets_the_s3_endpoint_only_for_s3_paths(monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert storage.beam_args(["/data", "gs://b/x"]) == []
    assert storage.beam_args(["/data", "s3://b/x"]) == [
        "--s3_endpoint_url=http://127.0.0.1:9000", "--s3_region_name=us-east-1", "--s3_access_key_id=key",
        "--s3_secret_access_key=secret", "--s3_verify=false"]
    monkeypatch.delenv("S3_ENDPOINT")
    assert storage.beam_args(["s3://b/x"]) == [], "AWS itself: Beam's defaults"
