"""Resources shared by every domain: where the data lives."""

import dagster as dg

from mlops_assets.settings import DataPaths, data_paths


class DataDirResource(dg.ConfigurableResource):
    """The project's data folder (landing, warehouse, quarantine, ...). Empty means `$MLOPS_DATA_DIR` or ./data."""

    root: str = ""

    @property
    def paths(self) -> DataPaths:
        return data_paths(self.root or None)
