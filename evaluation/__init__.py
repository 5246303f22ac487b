"""Offline evaluation of pre-ranking scores: request-by-request metrics (see `metrics`)."""
