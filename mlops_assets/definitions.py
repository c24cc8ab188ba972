"""The code location: the ``defs/`` folder's components (``dg``), also loaded by ``dagster -m mlops_assets.definitions``
and ``workspace.yaml``. Its project component reads the configured spec ($MLOPS_SPEC, else ``[tool.mlops] spec``
in pyproject.toml)."""

import importlib
import tomllib
from pathlib import Path

import dagster as dg

PACKAGE = Path(__file__).parent


def _load() -> dg.Definitions:
    pyproject = PACKAGE.parent / "pyproject.toml"
    if pyproject.is_file() and "dg" in tomllib.loads(pyproject.read_text()).get("tool", {}):
        return dg.load_from_defs_folder(path_within_project=PACKAGE)
    # Installed without its project folder (the container images): no pyproject.toml above the package for
    # load_from_defs_folder to find, so the same defs/ folder is loaded as the package's own component tree.
    return dg.ComponentTree(
        defs_module=importlib.import_module("mlops_assets.defs"),
        project_root=PACKAGE.parent,
        code_location_name="mlops_assets",
    ).build_defs()


defs = _load()
