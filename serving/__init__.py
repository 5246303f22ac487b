"""Serving: the cascade SavedModel's signatures, TF Serving deployment files, and the local
TF Serving-compatible gRPC server and client."""
