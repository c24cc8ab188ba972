"""mlops_assets: a Dagster-native MLOps platform."""
