"""AnomalyGate: stops a pipeline before Transform when ExampleValidator found anomalies."""
