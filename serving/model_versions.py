"""The versions under a TF Serving model base path (OUT/serving/hap/<version>/), as TF Serving
sees them: numeric folders whose SavedModel is completely written, that is, that hold
saved_model.pb, which the Pusher copies last. `hap serve`, `hap evaluate` and the serving
benchmark all pick versions with this one rule. No TensorFlow: `hap evaluate --help` stays fast."""
from __future__ import annotations

import os


def complete_versions(base_path: str) -> list[int]:
    """Version numbers under `base_path` whose SavedModel is completely written, ascending."""
    if not os.path.isdir(base_path):
        return []
    return sorted(int(name) for name in os.listdir(base_path)
                  if name.isdigit() and os.path.isfile(os.path.join(base_path, name, "saved_model.pb")))


def newest_complete_version(base_path: str) -> str:
    """The folder of the newest complete version; FileNotFoundError naming `base_path` if none."""
    versions = complete_versions(base_path)
    if not versions:
        raise FileNotFoundError(f"{base_path}: no complete version (a numeric folder with saved_model.pb)")
    return os.path.join(base_path, str(versions[-1]))
