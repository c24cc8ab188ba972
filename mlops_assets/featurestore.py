"""The feature store's public entry point: ``from mlops_assets.featurestore import FeatureStore``.

from mlops_assets.featurestore import FeatureStore, Project
store = FeatureStore(Project.load("spec.yaml"))
"""

from mlops_assets.features.pit import FeatureSource, assert_no_leakage, point_in_time_join
from mlops_assets.features.store import FeatureDataMissing, FeatureStore
from mlops_assets.project import Project

__all__ = [
    "FeatureDataMissing",
    "FeatureSource",
    "FeatureStore",
    "Project",
    "assert_no_leakage",
    "point_in_time_join",
]
