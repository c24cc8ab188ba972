"""The code location for ``dagster -m mlops_assets.definitions`` / ``workspace.yaml`` (and ``dg``, through the
component in ``mlops_assets/defs/``): the definitions of the configured project spec ($MLOPS_SPEC, else
``[tool.mlops] spec`` in pyproject.toml)."""

from mlops_assets.component import build_definitions
from mlops_assets.project import Project

defs = build_definitions(Project.load())
