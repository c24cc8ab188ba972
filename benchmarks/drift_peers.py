"""Evidently and NannyML on the drift scenarios' data, each in its own venv and subprocess.

The scenario benchmark (:mod:`benchmarks.drift_scenarios`) writes, per scenario, the reference period our
monitor calibrates on and the monitored days' population snapshots as Parquet (:func:`export_inputs`):

    <folder>/reference.parquet   one row per (entity, reference day): the champion's features and ``day``
    <folder>/current.parquet     one row per (entity, monitored day): the same columns
    <folder>/meta.json           numeric and categorical feature names, reference and monitored days

Each peer then runs this file as a worker in its own venv (``.bench/<peer>-venv``, created with ``uv venv`` +
``uv pip install -r benchmarks/peers/<peer>-requirements.txt`` when missing) and prints one JSON line with a
row per monitored day; the driver measures the subprocess's wall time and peak RSS (``os.wait4``).

* **Evidently 0.7.x**: ``Report([DataDriftPreset()])`` with its defaults, one run per monitored day against
  the whole reference: the dataset drift flag (share of drifted columns >= its ``drift_share``, 0.5) and
  the drifted columns.
* **NannyML 0.13.x**: ``UnivariateDriftCalculator`` (default methods and thresholds) and
  ``DataReconstructionDriftCalculator`` (PCA reconstruction error, default threshold), fitted on the
  reference chunked by day (``chunk_period="D"``), calculated on the monitored days (one chunk per day):
  the alerting features and the multivariate alert per day.

Both peers get the column types we declare (numeric / categorical, as the champion uses them); the rest
is each tool's default. The worker imports only the standard library, pandas and the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
PEER_REQUIREMENTS = ROOT / "benchmarks" / "peers"
DAY_COLUMN = "day"
TIMESTAMP_COLUMN = "timestamp"


@dataclass(frozen=True)
class Peer:
    """A peer library: its venv, requirements and what the table calls it."""

    name: str
    module: str
    label: str

    @property
    def venv(self) -> Path:
        return BENCH / f"{self.name}-venv"

    @property
    def requirements(self) -> Path:
        return PEER_REQUIREMENTS / f"{self.name}-requirements.txt"


PEERS = {
    "evidently": Peer("evidently", "evidently", "Evidently"),
    "nannyml": Peer("nannyml", "nannyml", "NannyML"),
}
PEER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
    "NML_DISABLE_USAGE_LOGGING": "1",  # NannyML's usage telemetry: no network here
}


# --------------------------------------------------------------------------- driver side


def ensure_venv(venv: Path, requirements: Path, module: str) -> tuple[Path | None, str]:
    """Python of a peer's venv (created from its requirements when missing) and the module's version,
    or None and what failed."""
    python = venv / "bin" / "python"
    if not python.exists():
        steps = [
            ["uv", "venv", "--python", f"{sys.version_info.major}.{sys.version_info.minor}", str(venv)],
            ["uv", "pip", "install", "--python", str(python), "-r", str(requirements)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                return None, f"`{' '.join(step)}` failed: {done.stderr.strip()[-800:]}"
    check = subprocess.run(
        [str(python), "-c", f"import {module}; print({module}.__version__)"],
        capture_output=True,
        text=True,
        env=dict(os.environ, **PEER_ENV),
    )
    if check.returncode != 0:
        return None, f"`import {module}` failed in {venv}: {check.stderr.strip()[-800:]}"
    return python, check.stdout.strip().splitlines()[-1]


def export_inputs(
    folder: Path,
    reference: dict[str, object],
    current: dict[str, object],
    numeric: list[str],
    categorical: list[str],
) -> Path:
    """Write the reference and monitored days' frames (``{day: DataFrame}``) and their metadata under ``folder``."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    features = [*numeric, *categorical]

    def stack(frames: dict) -> pd.DataFrame:
        parts = [f[features].assign(**{DAY_COLUMN: d}) for d, f in frames.items()]
        out = pd.concat(parts, ignore_index=True)
        for name in categorical:  # one dtype per categorical column for every reader (missing stays missing)
            out[name] = out[name].astype("string")
        return out

    stack(reference).to_parquet(folder / "reference.parquet", index=False)
    stack(current).to_parquet(folder / "current.parquet", index=False)
    meta = {
        "numeric": list(numeric),
        "categorical": list(categorical),
        "reference_days": list(reference),
        "days": list(current),
        "reference_rows": int(sum(len(f) for f in reference.values())),
        "current_rows": int(sum(len(f) for f in current.values())),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


def run_peer(peer: Peer, python: Path, folder: Path, timeout: float = 3600.0) -> dict:
    """One peer over one scenario's inputs in its own subprocess: its rows, wall time and peak RSS, or the error."""
    folder = Path(folder).absolute()  # the worker runs in ``folder``
    out, err = folder / f"{peer.name}.out", folder / f"{peer.name}.err"
    cmd = [
        str(Path(python).absolute()),
        str(Path(__file__).resolve()),
        "--worker",
        peer.name,
        "--data",
        str(folder),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0 = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        try:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=dict(env, **PEER_ENV), cwd=folder)
        except OSError as exc:
            return {
                "wall_seconds": 0.0,
                "peak_rss_mb": 0.0,
                "cpu_seconds": 0.0,
                "error": f"could not start: {exc}",
            }
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen from waiting again
    wall = time.perf_counter() - t0
    result = {
        "wall_seconds": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    if wall > timeout:
        return {**result, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (err.read_text().strip().splitlines() or ["no output on stderr"])[-1]  # the exception, if any
        return {**result, "error": f"exit {proc.returncode}: {last[-300:]} (see {err})"}
    try:
        payload = json.loads(out.read_text().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        return {**result, "error": f"unreadable output: {exc}"}
    return {**result, **payload}


# --------------------------------------------------------------------------- workers (in the peer's venv)


def _load(folder: Path):
    import pandas as pd

    meta = json.loads((folder / "meta.json").read_text())
    reference = pd.read_parquet(folder / "reference.parquet")
    current = pd.read_parquet(folder / "current.parquet")
    for frame in (reference, current):
        for name in meta["categorical"]:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return meta, reference, current


#: The p-value tests our benchmark configurations give Evidently by short name (``DataDriftPreset(num_method="ks")``).
_EVIDENTLY_P_VALUE_TESTS = ("ks", "chisquare", "z")


def _evidently_column_drifted(method: str, value: float, threshold: float) -> bool:
    """Evidently's rule per method: p-values drift below the threshold (KS: at or below), distances at or above it.

    ``method`` is what the snapshot reports: the short name a preset was given (``ks``) or, for the methods
    Evidently chose itself, their display name (``K-S p_value``, ``Wasserstein distance (normed)``)."""
    if "p_value" in method or method in _EVIDENTLY_P_VALUE_TESTS:
        return value <= threshold if method.startswith("K-S") or method == "ks" else value < threshold
    return value >= threshold


def evidently_worker(folder: Path) -> dict:
    """``Report([DataDriftPreset()])`` per monitored day against the whole reference."""
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    meta, reference, current = _load(folder)
    features = [*meta["numeric"], *meta["categorical"]]
    definition = DataDefinition(numerical_columns=meta["numeric"], categorical_columns=meta["categorical"])
    t0 = time.perf_counter()
    ref = Dataset.from_pandas(reference[features], data_definition=definition)
    rows, methods = [], {}
    for day, frame in current.groupby(DAY_COLUMN, sort=True):
        snapshot = Report([DataDriftPreset()]).run(
            current_data=Dataset.from_pandas(
                frame[features].reset_index(drop=True), data_definition=definition
            ),
            reference_data=ref,
        )
        drifted, count, share, dataset_share = [], None, None, None
        for metric in snapshot.dict()["metrics"]:
            config, value = metric["config"], metric["value"]
            kind = config.get("type", "")
            if kind.endswith("DriftedColumnsCount"):
                count, share, dataset_share = (
                    int(value["count"]),
                    float(value["share"]),
                    float(config["drift_share"]),
                )
            elif kind.endswith("ValueDrift"):
                methods[config["column"]] = config["method"]
                if _evidently_column_drifted(config["method"], float(value), float(config["threshold"])):
                    drifted.append(config["column"])
        print(f"evidently {day}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        rows.append(
            {
                "day": str(day),
                "dataset_alarm": share is not None and share >= dataset_share,
                "drifted": sorted(drifted),
                "drifted_count": count,  # Evidently's own count (the per-column rule above must agree)
                "judged": len(features),
            }
        )
    return {
        "version": evidently.__version__,
        "compute_seconds": time.perf_counter() - t0,
        "rule": f"share of drifted columns >= {dataset_share} (DataDriftPreset default)",
        "methods": sorted(set(methods.values())),
        "rows": rows,
    }


def nannyml_worker(folder: Path) -> dict:
    """NannyML's univariate and PCA-reconstruction drift, fitted on the reference chunked by day."""
    import nannyml as nml
    import pandas as pd

    meta, reference, current = _load(folder)
    features = [*meta["numeric"], *meta["categorical"]]
    for frame in (reference, current):  # each day's snapshot at noon UTC: one daily chunk per day
        frame[TIMESTAMP_COLUMN] = pd.to_datetime(frame[DAY_COLUMN]) + pd.Timedelta(hours=12)
    t0 = time.perf_counter()
    univariate = nml.UnivariateDriftCalculator(
        column_names=features,
        treat_as_numerical=meta["numeric"],
        treat_as_categorical=meta["categorical"],
        timestamp_column_name=TIMESTAMP_COLUMN,
        chunk_period="D",
    ).fit(reference)
    uni = univariate.calculate(current).filter(period="analysis").to_df()
    t1 = time.perf_counter()
    reconstruction = nml.DataReconstructionDriftCalculator(
        column_names=features, timestamp_column_name=TIMESTAMP_COLUMN, chunk_period="D"
    ).fit(reference)
    multi = reconstruction.calculate(current).filter(period="analysis").to_df()
    t2 = time.perf_counter()

    def chunk_days(frame: pd.DataFrame) -> list[str]:
        return [pd.Timestamp(t).date().isoformat() for t in frame[("chunk", "chunk", "start_date")]]

    alert_columns = [c for c in uni.columns if c[-1] == "alert" and c[0] in features]
    uni_days = chunk_days(uni)
    multi_days = [pd.Timestamp(t).date().isoformat() for t in multi[("chunk", "start_date")]]
    error = multi["reconstruction_error"].set_axis(multi_days)
    rows = []
    for i, day in enumerate(uni_days):
        alerting = sorted({c[0] for c in alert_columns if bool(uni.iloc[i][c])})
        rows.append(
            {
                "day": day,
                "dataset_alarm": bool(day in error.index and error.at[day, "alert"]),
                "reconstruction_error": float(error.at[day, "value"]) if day in error.index else None,
                "reconstruction_upper": float(error.at[day, "upper_threshold"])
                if day in error.index
                else None,
                "drifted": alerting,
                "judged": len(features),
            }
        )
    return {
        "version": nml.__version__,
        "compute_seconds": t2 - t0,
        "univariate_seconds": t1 - t0,
        "multivariate_seconds": t2 - t1,
        "rule": "PCA reconstruction error above its default band (reference daily chunks, mean + 3 sd)",
        "methods": sorted({*univariate.continuous_method_names, *univariate.categorical_method_names}),
        "rows": rows,
        "chunks": len(uni_days),
        "multivariate_chunks": len(multi_days),
    }


WORKERS = {"evidently": evidently_worker, "nannyml": nannyml_worker}


def main() -> None:
    parser = argparse.ArgumentParser(description="worker of benchmarks/drift_scenarios.py in a peer's venv")
    parser.add_argument("--worker", choices=sorted(WORKERS), required=True)
    parser.add_argument("--data", required=True, help="folder written by export_inputs")
    args = parser.parse_args()
    print(json.dumps(WORKERS[args.worker](Path(args.data)), default=str))


if __name__ == "__main__":
    main()
