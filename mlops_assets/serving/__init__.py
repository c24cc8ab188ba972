"""Serving: routing, gradual rollout, A/B statistics, the prediction log and the HTTP app (no Dagster)."""
