"""The MLflow resource: where runs, artifacts and the model registry live (no dagster-mlflow needed)."""

import dagster as dg

from mlops_assets.resources import DataDirResource
from mlops_assets.training.tracking import TrackingConfig


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry. An empty ``tracking_uri`` means ``$MLFLOW_TRACKING_URI`` or
    ``sqlite:///<data root>/mlflow/mlflow.db`` with artifacts under ``<data root>/mlflow/artifacts``.

    The resource creates no store: training creates it (``train_and_log`` calls
    ``ensure_tracking_store`` under a file lock, which also serializes a fresh store's migrations);
    every other step reads an existing one through :meth:`client`.
    """

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
        """An ``MlflowClient`` on the existing store; ``RegistryUnavailable`` (nothing created) without one."""
        from mlops_assets.training.tracking import registry_client

        return registry_client(self.tracking)
