"""Drift report rendering (markdown, PNG histograms) and the `mlops drift` command core on files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlops_assets.monitoring.drift import DriftInputError, compute_drift, drift_from_files
from mlops_assets.monitoring.report import drift_command, render_markdown, save_drift_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _frames(n: int = 600) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(42)
    ref = pd.DataFrame(
        {
            "avg_order_value_30d": rng.gamma(2.0, 25.0, n),
            "days_since_last_login": rng.integers(0, 30, n).astype(float),
            "plan": rng.choice(["basic", "standard", "premium"], n),
        }
    )
    cur = pd.DataFrame(
        {
            "avg_order_value_30d": rng.gamma(2.0, 40.0, n),  # drifted
            "days_since_last_login": ref["days_since_last_login"].to_numpy(),  # identical
            "plan": ref["plan"].to_numpy(),
        }
    )
    return ref, cur


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = drift_command(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_drift_command_json_has_documented_shape_and_matches_the_statistics(tmp_path: Path, fmt: str) -> None:
    ref, cur = _frames()
    ref_path, cur_path = tmp_path / f"ref.{fmt}", tmp_path / f"cur.{fmt}"
    for frame, path in ((ref, ref_path), (cur, cur_path)):
        frame.to_parquet(path) if fmt == "parquet" else frame.to_csv(path, index=False)
    code, out, err = _run([str(ref_path), str(cur_path), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert isinstance(doc["dataset_drift"], bool) and isinstance(doc["drift_share"], float)
    rows = {f["feature"]: f for f in doc["features"]}
    assert set(rows) == set(ref.columns)
    for row in rows.values():
        assert {"feature", "test", "statistic", "p_value", "drifted"} <= set(row)
    x_ref, x_cur = ref["avg_order_value_30d"], pd.read_csv(cur_path) if fmt == "csv" else cur
    ks = stats.ks_2samp(x_ref, x_cur["avg_order_value_30d"])
    assert rows["avg_order_value_30d"]["test"] == "ks"
    assert rows["avg_order_value_30d"]["p_value"] == pytest.approx(ks.pvalue, rel=1e-9, abs=1e-12)
    assert rows["avg_order_value_30d"]["drifted"] is True
    assert rows["days_since_last_login"]["drifted"] is False and rows["plan"]["test"] == "chi2"
    assert doc["drift_share"] == pytest.approx(1 / 3) and doc["dataset_drift"] is False


def test_drift_command_prints_a_markdown_table_and_fails_on_drift_when_asked(tmp_path: Path) -> None:
    ref, cur = _frames()
    ref.to_parquet(tmp_path / "ref.parquet")
    cur.to_parquet(tmp_path / "cur.parquet")
    args = [str(tmp_path / "ref.parquet"), str(tmp_path / "cur.parquet")]
    code, out, _ = _run(args)
    assert code == 0
    assert "| avg_order_value_30d | numeric | ks |" in out and "| plan | categorical | chi2 |" in out
    code, _, _ = _run([*args, "--drift-share", "0.3", "--fail-on-drift"])
    assert code == 1
    code, out, _ = _run([*args, "--json", "--method", "psi"])
    assert code == 0 and {f["test"] for f in json.loads(out)["features"]} == {"psi"}


def test_bad_input_gives_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    ref, cur = _frames(50)
    ref.to_parquet(tmp_path / "ref.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file")
    code, out, err = _run([str(tmp_path / "ref.parquet"), str(tmp_path / "missing.csv")])
    assert code == 2 and out == "" and "current file not found" in err and "missing.csv" in err
    code, _, err = _run([str(tmp_path / "ref.parquet"), str(tmp_path / "broken.parquet")])
    assert code == 2 and "cannot read current file" in err and "broken.parquet" in err
    pd.DataFrame({"other": [1, 2]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DriftInputError, match="no column in common.*other.csv"):
        drift_from_files(tmp_path / "ref.parquet", tmp_path / "other.csv")
    code, _, err = _run([str(tmp_path / "ref.parquet"), str(tmp_path / "other.csv")])
    assert code == 2 and "no column in common" in err and "other.csv" in err
    code, _, _ = _run(["only-one-argument"])
    assert code == 2


def test_saved_report_has_markdown_json_and_one_png_per_feature(tmp_path: Path) -> None:
    ref, cur = _frames()
    report = compute_drift(ref, cur)
    saved = save_drift_report(report, ref, cur, tmp_path / "reports", name="2026-03-01")
    files = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert all("drift" in name for name in files)
    assert saved.markdown_path.read_text() == saved.markdown
    assert json.loads(saved.json_path.read_text()) == json.loads(json.dumps(report.to_dict()))
    assert set(saved.image_paths) == set(ref.columns)
    for feature, path in saved.image_paths.items():
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert f"![{feature}]({path.name})" in saved.markdown
    for row in report.features:
        assert f"| {row.feature} | {row.kind} | {row.test} |" in saved.markdown
    embedded = render_markdown(report, saved.image_paths, embed_images=True)
    assert embedded.count("data:image/png;base64,") == len(saved.image_paths)


# --------------------------------------------------------------------------- --reference-period


def _reading_day(rng: np.random.Generator, day: str, n: int, shift: float = 0.0) -> pd.DataFrame:
    """One day of a sensor log: a timestamp, two readings and a site."""
    return pd.DataFrame(
        {
            "read_at": pd.Timestamp(day, tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s"),
            "temperature": rng.normal(20.0 + shift, 5.0, n),
            "load": rng.gamma(2.0, 3.0, n),
            "site": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2]),
        }
    )


@pytest.fixture(scope="module")
def reading_period(tmp_path_factory) -> dict[str, Path]:
    """28 reference days of 2,000 readings, then a quiet day and a day 1.5 degrees warmer (as files)."""
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("reading_period")
    days = [f"2026-03-{d:02d}" for d in range(1, 29)]
    reference = pd.concat([_reading_day(rng, d, 2000) for d in days], ignore_index=True)
    files = {"reference": folder / "reference.parquet", "quiet": folder / "quiet.parquet"}
    reference.to_parquet(files["reference"])
    _reading_day(rng, "2026-04-01", 2000).to_parquet(files["quiet"])
    files["warmer"] = folder / "warmer.csv"
    _reading_day(rng, "2026-04-02", 2000, shift=1.5).drop(columns="read_at").to_csv(
        files["warmer"], index=False
    )
    return files


def test_reference_period_bands_are_the_brute_force_chunk_spread_and_a_quiet_day_passes(
    reading_period,
) -> None:
    ref_file, quiet = reading_period["reference"], reading_period["quiet"]
    # fixed thresholds at this size: any test is significant, so the question is what the effect sizes say
    code, out, err = _run(
        [str(ref_file), str(quiet), "--reference-period", "read_at", "--json", "--fail-on-drift"]
    )
    assert code == 0, err
    got = json.loads(out)
    assert got["mode"] == "calibrated" and got["dataset_drift"] is False and got["n_drifted"] == 0
    period = got["reference_period"]
    assert (period["first_day"], period["last_day"], period["chunks"]) == ("2026-03-01", "2026-03-28", 28)
    assert got["skipped"]["read_at"] == "the reference period's day column"
    # the temperature's band: mean + 3 sd of each reference day's normalized Wasserstein against the other days
    reference = pd.read_parquet(ref_file)
    day = reference["read_at"].dt.strftime("%Y-%m-%d")
    loop = []
    for d in sorted(day.unique()):
        cur, rest = reference.loc[day == d, "temperature"], reference.loc[day != d, "temperature"]
        loop.append(stats.wasserstein_distance(rest, cur) / np.std(rest))
    loop = np.array(loop)
    [row] = [f for f in got["features"] if f["feature"] == "temperature"]
    assert row["test"] == "wasserstein"
    assert row["threshold"] == pytest.approx(max(loop.mean() + 3 * loop.std(ddof=1), 0.03), rel=1e-9)
    current = pd.read_parquet(quiet)["temperature"]
    assert row["statistic"] == pytest.approx(
        stats.wasserstein_distance(reference["temperature"], current) / np.std(reference["temperature"]),
        rel=1e-9,
    )
    assert row["drifted"] is False and row["statistic"] < row["threshold"]


def test_reference_period_flags_a_shifted_day_worst_feature_first_and_writes_its_report(
    reading_period, tmp_path
) -> None:
    report_dir = tmp_path / "report"
    argv = [str(reading_period["reference"]), str(reading_period["warmer"]), "--reference-period", "read_at"]
    code, out, err = _run([*argv, "--fail-on-drift", "--report-dir", str(report_dir)])
    assert code == 1, err
    assert out.startswith("# Drift report (calibrated on the reference period)")
    assert "**Dataset drift**" in out and "28 daily chunks" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "| feature |" not in line]
    assert table[0].startswith("| temperature | numeric | wasserstein |") and "**yes**" in table[0]
    assert "- `temperature`: wasserstein" in out  # why flagged
    saved = json.loads((report_dir / "drift_report.json").read_text())
    assert saved["features"][0]["feature"] == "temperature" and saved["features"][0]["drifted"] is True
    assert (report_dir / "drift_report.md").read_text() == out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--reference-period", "taken_at"], "column 'taken_at' is not in the reference data"),
        (["--reference-period", "site"], "column 'site' is not a date or timestamp"),
        (["--reference-period", "read_at", "--method", "chi2"], "--method chi2 cannot be calibrated"),
        (
            ["--reference-period", "read_at", "--method", "chi2", "--numeric-method", "ks"],
            "--method chi2 cannot be calibrated",
        ),
        (
            ["--reference-period", "read_at", "--categorical-method", "chi2"],
            "--categorical-method chi2 cannot",
        ),
    ],
)
def test_reference_period_errors_name_the_file_and_the_column(reading_period, extra, message) -> None:
    code, out, err = _run([str(reading_period["reference"]), str(reading_period["quiet"]), *extra])
    assert code == 2 and out == ""
    assert message in err
    assert str(reading_period["reference"]) in err


def test_reference_period_of_too_few_days_is_refused_with_its_span(tmp_path) -> None:
    rng = np.random.default_rng(5)
    short = pd.concat([_reading_day(rng, f"2026-03-0{d}", 300) for d in range(1, 6)], ignore_index=True)
    short.to_parquet(tmp_path / "short.parquet")
    _reading_day(rng, "2026-03-09", 300).to_parquet(tmp_path / "day.parquet")
    code, _, err = _run(
        [str(tmp_path / "short.parquet"), str(tmp_path / "day.parquet"), "--reference-period", "read_at"]
    )
    assert code == 2
    assert "holds 5 day(s) of 'read_at' (2026-03-01..2026-03-05); calibrating needs at least 10" in err


def test_one_feature_far_beyond_its_band_among_thirty_is_dataset_drift_on_a_public_dataset(tmp_path) -> None:
    """scikit-learn's breast-cancer table (569 rows, 30 measurements): 20 reference days of 400 rows resampled,
    then a resampled day as it is and one whose mean radius is 25% larger. With 20 heavy-tailed chunks some
    reference chunks leave their bands by themselves, so one feature just beyond its band is not dataset drift;
    one 14 times its band's distance away is."""
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer(as_frame=True).frame
    days = pd.date_range("2026-05-01", periods=20, freq="D")
    reference = pd.concat(
        [table.sample(400, replace=True, random_state=i).assign(day=d) for i, d in enumerate(days)],
        ignore_index=True,
    )
    reference.to_parquet(tmp_path / "reference.parquet")
    table.sample(400, replace=True, random_state=99).to_parquet(tmp_path / "quiet.parquet")
    shifted = table.sample(400, replace=True, random_state=98)
    shifted["mean radius"] *= 1.25
    shifted.to_parquet(tmp_path / "shifted.parquet")
    ref = str(tmp_path / "reference.parquet")
    code, out, err = _run([ref, str(tmp_path / "quiet.parquet"), "--reference-period", "day", "--json"])
    quiet = json.loads(out)
    assert code == 0 and quiet["dataset_drift"] is False, err
    code, out, err = _run([ref, str(tmp_path / "shifted.parquet"), "--reference-period", "day", "--json"])
    got = json.loads(out)
    assert got["dataset_drift"] is True and got["n_drifted"] == 1, err
    assert got["features"][0]["feature"] == "mean radius" and got["features"][0]["severity"] > 4
