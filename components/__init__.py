"""Custom TFX components (component.py, executor.py and tests side by side, as in tfx-addons)."""
