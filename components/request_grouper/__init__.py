"""RequestGrouper: Transform's per-sample examples regrouped into one record per request."""
