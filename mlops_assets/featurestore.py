"""The feature store's public entry point: ``from mlops_assets.featurestore import FeatureStore``."""

from mlops_assets.features.pit import FeatureSource, assert_no_leakage, point_in_time_join
from mlops_assets.features.store import FeatureStore
from mlops_assets.features.views import FEATURE_VIEWS, Feature, FeatureView

__all__ = [
    "FEATURE_VIEWS",
    "Feature",
    "FeatureSource",
    "FeatureStore",
    "FeatureView",
    "assert_no_leakage",
    "point_in_time_join",
]
