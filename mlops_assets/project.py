"""A loaded project: the user's spec plus where its data lives, built once at the edge and passed down.

The spec is found, in order: an explicit path, ``$MLOPS_SPEC``, then ``[tool.mlops] spec`` in the
``pyproject.toml`` of the working directory (or a parent). The data folder: an explicit path,
``$MLOPS_DATA_DIR``, then ``data/`` beside that ``pyproject.toml``. ``$MLOPS_PARTITIONS_END`` (a day) overrides the
spec's ``partitions.end`` (a live replay declares the days it is about to land before their files exist).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path

from mlops_assets.settings import DataPaths, data_paths
from mlops_assets.spec.model import Entity, FeatureView, ProjectSpec, Source

SPEC_ENV = "MLOPS_SPEC"
PARTITIONS_END_ENV = "MLOPS_PARTITIONS_END"


class ProjectConfigError(ValueError):
    """No spec could be found, or the configuration naming it is wrong."""


def _pyproject(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def project_root(start: Path | None = None) -> Path:
    """The folder of the nearest ``pyproject.toml`` above the working directory (else the working directory)."""
    found = _pyproject(start)
    return found.parent if found is not None else Path.cwd().resolve()


def configured_spec_path(explicit: str | Path | None = None, environ: dict[str, str] | None = None) -> Path:
    """The spec file to use (see the module docstring); ProjectConfigError saying how to name one."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser().resolve()
    if env.get(SPEC_ENV):
        return Path(env[SPEC_ENV]).expanduser().resolve()
    pyproject = _pyproject()
    if pyproject is not None:
        try:
            table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("mlops", {})
        except tomllib.TOMLDecodeError as exc:
            raise ProjectConfigError(f"{pyproject}: invalid TOML: {exc}") from None
        if "spec" in table:
            return (pyproject.parent / table["spec"]).resolve()
    raise ProjectConfigError(
        'no project spec: pass --spec PATH, set $MLOPS_SPEC, or add `[tool.mlops] spec = "path/spec.yaml"` '
        "to pyproject.toml (`mlops init` writes a starter spec from sample landing files)"
    )


@dataclass(frozen=True)
class Project:
    """The spec, its file, and the data folder: everything an asset, a command or the serving app needs."""

    spec: ProjectSpec
    paths: DataPaths
    spec_path: Path | None = None

    @classmethod
    def load(
        cls, spec: str | Path | None = None, data_root: str | Path | None = None, *, filters: bool = True
    ) -> Project:
        """Read and validate the configured spec (see the module docstring)."""
        from mlops_assets.spec.load import load_spec

        path = configured_spec_path(spec)
        return cls(load_spec(path, filters=filters), data_paths(data_root), path)

    @classmethod
    def from_spec(cls, spec: ProjectSpec, data_root: str | Path | None = None) -> Project:
        """A project from spec objects built in Python (checked like a YAML file)."""
        from mlops_assets.spec.check import check_project
        from mlops_assets.spec.load import SpecError

        issues = check_project(spec)
        if issues:
            raise SpecError(f"spec {spec.name!r}", issues)
        return cls(spec, data_paths(data_root))

    def with_data_root(self, root: str | Path) -> Project:
        return Project(self.spec, data_paths(root), self.spec_path)

    # ------------------------------------------------------------------ sources and ingestion

    @property
    def name(self) -> str:
        return self.spec.name

    def source(self, name: str) -> Source:
        return self.spec.source(name)

    def sources_of_kind(self, *kinds: str) -> list[str]:
        return [n for n, s in self.spec.sources.items() if s.kind in kinds]

    def landing_dir(self, source: str) -> Path:
        return self.paths.landing_dir(self.spec.landing_folder(source))

    @cached_property
    def contracts(self) -> dict:
        from mlops_assets.ingestion.schema import contract_for

        return {name: contract_for(name, source) for name, source in self.spec.sources.items()}

    def contract(self, source: str):
        return self.contracts[source]

    # ------------------------------------------------------------------ partitions

    def partitions_end(self) -> date | None:
        """The last daily partition: ``$MLOPS_PARTITIONS_END``, else the spec's day, the last landing day ("data"),
        or None ("open")."""
        override = os.environ.get(PARTITIONS_END_ENV, "").strip()
        if override:
            try:
                return date.fromisoformat(override)
            except ValueError:
                raise ProjectConfigError(
                    f"${PARTITIONS_END_ENV} must be a day (YYYY-MM-DD), got {override!r}"
                ) from None
        end = self.spec.partitions.end
        if end == "open":
            return None
        if end == "data":
            return max(self.landing_days(), default=self.spec.partitions.start)
        return end

    def landing_days(self) -> set[date]:
        """Every day named by a landing file of any source (from file names only: cheap)."""
        from mlops_assets.ingestion.files import list_landing_files

        days = set()
        for name in self.spec.sources:
            for landing in list_landing_files(self.landing_dir(name), self.spec.sources[name].pattern):
                days.add(date.fromisoformat(landing.day))
        return days

    def partition_days(self, until: date | None = None) -> list[str]:
        """Every partition key, first to last (``until`` bounds an open set; default today)."""
        start = self.spec.partitions.start
        end = self.partitions_end() or until or datetime.now(UTC).date()
        return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]

    # ------------------------------------------------------------------ entities, views, target

    def view(self, name: str) -> FeatureView:
        return self.spec.view(name)

    @property
    def view_names(self) -> list[str]:
        return list(self.spec.feature_views)

    def entity(self, name: str) -> Entity:
        return self.spec.entities[name]

    def view_entity(self, view: str) -> Entity:
        return self.spec.entity_of_view(view)

    @property
    def target_entity(self) -> Entity:
        """The entity the target is about (``target.entity``, or the one whose key its source holds)."""
        target = self._target
        if target.entity is not None:
            return self.spec.entities[target.entity]
        columns = self.source(target.source).columns
        return next(e for e in self.spec.entities.values() if e.join_key in columns)

    @property
    def target_timestamp(self) -> str:
        """The label column holding the time features are read at."""
        target = self._target
        return target.timestamp or self.source(target.source).timestamp

    @property
    def _target(self):
        if self.spec.target is None:
            raise ProjectConfigError(f"spec {self.name!r} declares no target: add a `target:` section")
        return self.spec.target

    @property
    def model_name(self) -> str:
        if self.spec.model is None:
            raise ProjectConfigError(f"spec {self.name!r} declares no model: add a `model:` section")
        return self.spec.model.name

    def resolve_path(self, relative: str) -> Path:
        """A path named in the spec, relative to the spec's folder."""
        base = self.spec_path.parent if self.spec_path is not None else Path.cwd()
        return (base / relative).resolve()
