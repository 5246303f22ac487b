"""The Keras models and their training code: Transform's preprocessing_fn, the light two-tower
model, the heavy cross-feature model, and the sample-routing losses."""
