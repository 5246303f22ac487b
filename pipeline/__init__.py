"""The TFX pipeline: `create_pipeline()`, its default configs, and one runner per orchestrator."""
