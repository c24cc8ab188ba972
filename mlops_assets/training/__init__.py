"""Training domain: train, evaluate, gate, register, promote and reproduce the project's model (no Dagster here)."""
