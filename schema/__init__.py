"""TFDV schemas: the curated one for the default (simulated) feature set, and the derivation of
a contract-level schema from any `features.yaml`."""
import os

DEFAULT_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMA = os.path.join(DEFAULT_DIR, "schema.pbtxt")
DEFAULT_FEATURES = os.path.join(DEFAULT_DIR, "features.yaml")
