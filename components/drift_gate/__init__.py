"""DriftGate: stops a pipeline before Transform when today's data drifted from the last accepted day's."""
