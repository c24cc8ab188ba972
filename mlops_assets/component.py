"""The Dagster Component: a project spec becomes the assets, checks, sensors, schedules and jobs of a code location.

In YAML (``defs/<folder>/defs.yaml`` of a ``dg`` project)::

    type: mlops_assets.component.MlopsProject
    attributes:
      spec: ../../examples/<name>/spec.yaml  # relative to this file; empty: $MLOPS_SPEC or [tool.mlops] spec
      data_dir: ""                           # empty: $MLOPS_DATA_DIR or ./data

In Python: ``build_definitions(Project.load("spec.yaml"))``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mlops_assets.project import Project


def build_definitions(project: Project) -> dg.Definitions:
    """Every definition of a project: one asset per source and per feature view, the training set, the online
    store, the model plane and monitoring (when the spec has a target and a model), their sensors and jobs."""
    from mlops_assets.executors import default_executor
    from mlops_assets.features import definitions as features
    from mlops_assets.ingestion import definitions as ingestion
    from mlops_assets.monitoring import definitions as monitoring
    from mlops_assets.partitions import daily_partitions
    from mlops_assets.resources import DataDirResource
    from mlops_assets.serving import definitions as serving
    from mlops_assets.training import definitions as training
    from mlops_assets.training.resources import MlflowResource

    partitions = daily_partitions(project)
    data = DataDirResource(root=str(project.paths.root))
    resources: dict = {"data": data}
    if project.spec.model is not None:
        resources["mlflow"] = MlflowResource(
            data=data, model_name=project.model_name, experiment_name=project.name
        )
    return dg.Definitions.merge(
        ingestion.build_defs(project, partitions),
        features.build_defs(project, partitions),
        training.build_defs(project),
        monitoring.build_defs(project, partitions),
        serving.build_defs(project, partitions),
        dg.Definitions(resources=resources, executor=default_executor()),
    )


class MlopsProject(dg.Component, dg.Resolvable, dg.Model):
    """An mlops_assets project: the definitions built from one spec file."""

    spec: str = (
        ""  # the spec file, relative to this component's folder (empty: $MLOPS_SPEC or [tool.mlops] spec)
    )
    data_dir: str = ""  # the data folder (empty: $MLOPS_DATA_DIR or ./data beside pyproject.toml)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        spec = (Path(context.path) / self.spec).resolve() if self.spec else None
        return build_definitions(Project.load(spec, self.data_dir or None))
