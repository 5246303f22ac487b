"""The hybrid-sample dataset: its contract, readers, simulator and validator."""
