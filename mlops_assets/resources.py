"""Resources shared by every domain: where the data lives."""

import dagster as dg

from mlops_assets.project import Project
from mlops_assets.settings import DataPaths, data_paths


class DataDirResource(dg.ConfigurableResource):
    """The project's data folder (landing, warehouse, quarantine, ...). Empty means `$MLOPS_DATA_DIR` or ./data."""

    root: str = ""

    @property
    def paths(self) -> DataPaths:
        return data_paths(self.root or None)


def runtime_project(project: Project, data: DataDirResource) -> Project:
    """The project with the data folder the run was configured with."""
    return project.with_data_root(data.paths.root)
