"""The file-system layer: every data and artifact path HAP reads or writes outside a Beam
pipeline goes through here, so that a local path, `s3://` and `gs://` work wherever TFX's own
components work.

A URI goes through TensorFlow's file systems (`tf.io.gfile`, what TFX's `fileio` uses); a local
path through Python's own calls, which keeps commands that never touch TensorFlow (`hap data
validate`, `hap config show`) fast. Inside Beam pipelines, Beam's FileSystems reads the same
stores: `beam_args()` gives it the S3 endpoint.

`s3://` comes from tensorflow-io (the `s3` extra of setup.py), registered on first use. Its
endpoint and credentials are the standard environment: `S3_ENDPOINT` (with its scheme,
`http://HOST:PORT`, for a server other than AWS), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`. tensorflow-io 0.37.1 (the release for TF 2.16) aborts the process at exit once its
S3 client was used ("pure virtual method called", tensorflow/io#2039), so `exit(code)` ends a
command with its own exit status instead.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import posixpath
import shutil
import sys
import types
from typing import IO, Iterator

REMOTE_SCHEMES = ("s3://", "gs://")
_S3_USED = False
_BEFORE_FORK = False


class StorageError(OSError):
    """A URI that cannot be reached: its bucket, credentials or endpoint; the message names it."""


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def _gfile(path: str):
    global _S3_USED
    if _BEFORE_FORK:
        return _BeamReads(path)
    import tensorflow as tf

    if str(path).startswith("s3://") and not _S3_USED:
        try:
            import tensorflow_io  # noqa: F401  (registers s3:// with tf.io.gfile)
        except ImportError as e:
            raise StorageError(f"{path}: s3:// needs tensorflow-io; install HAP with its `s3` extra") from e
        _S3_USED = True
    return tf.io.gfile


@contextlib.contextmanager
def before_fork() -> Iterator[None]:
    """Within it, URIs are read through Beam's file systems instead of TensorFlow's, and nothing
    remote is written: for a process that reads a pipeline's definition and then forks the
    processes that run its components, as Airflow's task runner does with the DAG file.
    tensorflow-io's S3 client runs threads that a fork does not copy, so a forked task that
    used the client its parent had started waited for them forever (the DAG under Celery
    workers, tests/test_cluster.py); Beam's clients (boto3, google-cloud-storage) start none."""
    global _BEFORE_FORK
    previous, _BEFORE_FORK = _BEFORE_FORK, True
    try:
        yield
    finally:
        _BEFORE_FORK = previous


class _BeamReads:
    """The part of tf.io.gfile that a pipeline's definition reads, through Beam's FileSystems."""

    def __init__(self, path: str):
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions

        FileSystems.set_options(PipelineOptions(beam_args([path])))
        self._fs = FileSystems

    def _under(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        (result,) = self._fs.match([prefix + "**"])
        return [m.path[len(prefix):] for m in result.metadata_list]

    def exists(self, path: str) -> bool:
        return self._fs.exists(path) or self.isdir(path)

    def isdir(self, path: str) -> bool:
        return bool(self._under(path))

    def listdir(self, path: str) -> list[str]:
        return sorted({relative.split("/", 1)[0] for relative in self._under(path)})

    def glob(self, pattern: str) -> list[str]:
        (result,) = self._fs.match([pattern])
        return [m.path for m in result.metadata_list]

    def stat(self, path: str):
        (result,) = self._fs.match([path])
        return types.SimpleNamespace(length=result.metadata_list[0].size_in_bytes)

    def GFile(self, path: str, mode: str):  # noqa: N802  (tf.io.gfile's name)
        from apache_beam.io.filesystem import CompressionTypes

        if "r" not in mode:
            raise StorageError(f"{path}: nothing remote is written before a fork (storage.before_fork)")
        raw = self._fs.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        return raw if "b" in mode else io.TextIOWrapper(raw, encoding="utf-8", newline="")


def join(path: str, *parts: str) -> str:
    return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def absolute(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return _gfile(path).exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return exists(path) and not isdir(path)


def listdir(path: str) -> list[str]:
    """The names in a directory, without trailing slashes."""
    if is_remote(path):
        return sorted(name.rstrip("/") for name in _gfile(path).listdir(path))
    return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
    if is_remote(pattern):
        return sorted(_gfile(pattern).glob(pattern))
    import glob as local_glob

    return sorted(local_glob.glob(pattern))


def size(path: str) -> int:
    return _gfile(path).stat(path).length if is_remote(path) else os.path.getsize(path)


def makedirs(path: str) -> None:
    if is_remote(path):
        _gfile(path).makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def rmtree(path: str) -> None:
    """Removes a directory and everything under it; nothing if it is not there."""
    if not exists(path):
        return
    if is_remote(path):
        _gfile(path).rmtree(path)
    else:
        shutil.rmtree(path)


def remove(path: str) -> None:
    if is_remote(path):
        _gfile(path).remove(path)
    else:
        os.remove(path)


def open(path: str, mode: str = "r", encoding: str | None = "utf-8") -> IO:  # noqa: A001  (the layer's open)
    """A file of a local path or a URI; text modes decode `encoding`. A `.gz` file opened for
    reading is decompressed."""
    binary, gz = "b" in mode, path.endswith(".gz") and "r" in mode
    plain = mode.replace("t", "").replace("b", "")
    if is_remote(path):
        if not (binary or gz):
            return _gfile(path).GFile(path, plain)  # GFile decodes UTF-8 itself
        raw = _gfile(path).GFile(path, plain + "b")
    else:
        import builtins

        raw = builtins.open(path, plain + "b")
    if gz:
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    return raw if binary else io.TextIOWrapper(raw, encoding=encoding, newline="")


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` whole or not at all: a temporary name beside it, then a rename."""
    staging = f"{path}.tmp"
    with open(staging, "w") as f:
        f.write(text)
    replace(staging, path)


def replace(source: str, target: str) -> None:
    """Moves a file or directory onto `target` (a file, an empty directory or nothing). Local: one
    rename, so a reader sees all or nothing. An object store has no directories to rename: the objects are
    copied under `target` and the source removed, so a reader of `target` must wait for its
    writer to finish (TFX publishes an artifact only after its executor returns)."""
    if not is_remote(target):
        os.replace(source, target)
        return
    gfile = _gfile(target)
    if gfile.isdir(source):
        if gfile.exists(target):
            gfile.rmtree(target)
        for directory, _, files in gfile.walk(source):
            relative = posixpath.relpath(directory.rstrip("/"), source.rstrip("/"))
            destination = target if relative == "." else posixpath.join(target, relative)
            gfile.makedirs(destination)
            for name in files:
                gfile.copy(posixpath.join(directory, name), posixpath.join(destination, name), overwrite=True)
        gfile.rmtree(source)
    else:
        gfile.rename(source, target, overwrite=True)


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
    if is_remote(path):
        for directory, subdirs, files in _gfile(path).walk(path):
            yield directory.rstrip("/"), [d.rstrip("/") for d in subdirs], files
    else:
        yield from os.walk(path)


def check_reachable(uri: str) -> None:
    """Raises StorageError naming `uri` when its store cannot be listed: a bucket that does not
    exist, missing or refused credentials, an endpoint that does not answer. Local paths pass."""
    if not is_remote(uri):
        return
    scheme, rest = uri.split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}/"
    try:
        reachable = _gfile(uri).isdir(bucket) or _gfile(uri).exists(bucket)
    except Exception as e:  # the file system's own errors differ by scheme and client
        raise StorageError(f"{uri}: cannot reach its bucket {bucket}: {e} ({_where(scheme)})") from e
    if not reachable:
        raise StorageError(f"{uri}: the bucket {bucket} does not exist or these credentials cannot list it "
                           f"({_where(scheme)})")


def _where(scheme: str) -> str:
    if scheme != "s3":
        return f"{scheme}:// credentials from the environment"
    endpoint = os.environ.get("S3_ENDPOINT", "AWS")
    key = "AWS_ACCESS_KEY_ID set" if os.environ.get("AWS_ACCESS_KEY_ID") else "no AWS_ACCESS_KEY_ID"
    return f"endpoint {endpoint}, {key}"


def beam_args(paths: list[str]) -> list[str]:
    """Beam's S3 filesystem options from the same environment as TensorFlow's, when any of
    `paths` is on S3 and S3_ENDPOINT names a server other than AWS; else none."""
    endpoint = os.environ.get("S3_ENDPOINT")
    if not endpoint or not any(str(p).startswith("s3://") for p in paths):
        return []
    args = [f"--s3_endpoint_url={endpoint}", f"--s3_region_name={os.environ.get('AWS_REGION', 'us-east-1')}"]
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        args += [f"--s3_access_key_id={os.environ['AWS_ACCESS_KEY_ID']}",
                 f"--s3_secret_access_key={os.environ.get('AWS_SECRET_ACCESS_KEY', '')}"]
    if endpoint.startswith("http://"):
        args.append("--s3_verify=false")
    return args


def exit(code: int) -> None:  # noqa: A001  (ends the process as sys.exit would)
    """Ends the process with `code`. Once tensorflow-io's S3 client was used, its teardown aborts
    the process (exit status 134) after everything else finished, so this flushes and leaves
    without running it."""
    if _S3_USED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
