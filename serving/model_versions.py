"""The versions under a TF Serving model base path (OUT/serving/hap/<version>/), as TF Serving
sees them: numeric folders whose SavedModel is completely written, that is, that hold
saved_model.pb, which the Pusher copies last. `hap serve`, `hap evaluate` and the serving
benchmark all pick versions with this one rule, on a local path or an object store (hap/storage.py).
No TensorFlow for a local path: `hap evaluate --help` stays fast."""
from __future__ import annotations

from hap import storage


def complete_versions(base_path: str) -> list[int]:
    """Version numbers under `base_path` whose SavedModel is completely written, ascending."""
    if not storage.isdir(base_path):
        return []
    return sorted(int(name) for name in storage.listdir(base_path)
                  if name.isdigit() and storage.isfile(storage.join(base_path, name, "saved_model.pb")))


def newest_complete_version(base_path: str) -> str:
    """The folder of the newest complete version; FileNotFoundError naming `base_path` if none."""
    versions = complete_versions(base_path)
    if not versions:
        raise FileNotFoundError(f"{base_path}: no complete version (a numeric folder with saved_model.pb)")
    return storage.join(base_path, str(versions[-1]))
