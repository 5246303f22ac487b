"""HAP: Heterogeneity-Aware Adaptive Pre-ranking as a TFX pipeline.

TensorFlow Recommenders only works with Keras 2, and TensorFlow 2.16 picks its Keras when it is
first imported, so the switch is set here, before any submodule can import TensorFlow. Child
processes (Beam workers) inherit it through the environment.
"""
import os
import sys
import warnings

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    warnings.warn(
        "TensorFlow was imported before hap with TF_USE_LEGACY_KERAS unset; "
        "TensorFlow Recommenders needs Keras 2: import hap first or export TF_USE_LEGACY_KERAS=1.",
        stacklevel=2,
    )
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA stubs, CPU flags) buries our own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
