"""Training domain: train, evaluate, gate, register, promote and reproduce the churn model (no Dagster here)."""
