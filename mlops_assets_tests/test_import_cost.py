"""The code location imports without the heavy libraries: every run process, step process and `dagster dev`
reload pays for what `import mlops_assets.definitions` imports, so training, statistics, tracking and serving
libraries load only inside the asset, check and sensor bodies that use them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Imported by runs that need them, never by loading the definitions.
HEAVY = (
    "pandas",
    "sklearn",
    "scipy",
    "mlflow",
    "matplotlib",
    "statsmodels",
    "fastapi",
    "uvicorn",
    "skops",
    "pyarrow.compute",  # pyarrow's core builds the column schemas; its compute and Parquet modules are ~0.1 s more
    "pyarrow.parquet",
)

_PROBE = """
import json, sys
import %s as module
defs = getattr(module, "defs", None)
assets = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()) if defs else []
print(json.dumps({"heavy": sorted(m for m in %r if m in sys.modules), "assets": assets}))
"""


def _probe(module: str, env: dict[str, str]) -> dict:
    """What importing ``module`` in a fresh interpreter loads: the heavy libraries, the assets of its ``defs``."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE % (module, HEAVY)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("example", ["churn", "bikes"])
def test_the_code_location_loads_every_asset_without_importing_a_heavy_library(example, tmp_path):
    spec = ROOT / "examples" / example / "spec.yaml"
    found = _probe(
        "mlops_assets.definitions", {"MLOPS_SPEC": str(spec), "MLOPS_DATA_DIR": str(tmp_path / "data")}
    )
    # the probe really loaded the project's definitions (not an empty code location)
    assert {"training_set", "candidate_model", "evaluation_report", "promotion", "drift_report"} <= set(
        found["assets"]
    )
    assert found["heavy"] == [], f"imported by `import mlops_assets.definitions`: {found['heavy']}"


def test_the_probe_sees_a_heavy_import_when_there_is_one(tmp_path):
    """The same probe on a module that imports pandas and scikit-learn reports them."""
    (tmp_path / "uses_heavy.py").write_text("import pandas\nfrom sklearn import base\n")
    pythonpath = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    found = _probe("uses_heavy", {"PYTHONPATH": pythonpath})
    assert {"pandas", "sklearn"} <= set(found["heavy"])
