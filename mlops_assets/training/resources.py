"""The MLflow resource: where runs, artifacts and the model registry live (no dagster-mlflow needed)."""

import dagster as dg

from mlops_assets.resources import DataDirResource
from mlops_assets.training.tracking import TrackingConfig, ensure_tracking_store


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry. An empty ``tracking_uri`` means ``$MLFLOW_TRACKING_URI`` or
    ``sqlite:///<data root>/mlflow/mlflow.db`` with artifacts under ``<data root>/mlflow/artifacts``."""

    data: DataDirResource
    model_name: str
    experiment_name: str
    tracking_uri: str = ""

    @property
    def tracking(self) -> TrackingConfig:
        """The resolved tracking configuration."""
        return TrackingConfig.for_data_root(
            self.data.paths.root,
            tracking_uri=self.tracking_uri,
            experiment_name=self.experiment_name,
            model_name=self.model_name,
        )

    def client(self):
        """An ``MlflowClient`` bound to the tracking and registry URI."""
        from mlops_assets.training.tracking import client_for

        return client_for(self.tracking)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Schema migrations of a fresh SQLite store race under concurrent first use: create it once, locked.
        ensure_tracking_store(self.tracking)
