"""The code location: the ``defs/`` folder's components (``dg``), also loaded by ``dagster -m mlops_assets.definitions``
and ``workspace.yaml``. Its project component reads the configured spec ($MLOPS_SPEC, else ``[tool.mlops] spec``
in pyproject.toml)."""

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
