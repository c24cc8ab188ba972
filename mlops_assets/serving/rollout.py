"""Gradual rollout: canary 5% -> 25% -> 50% -> 100%, advanced while guardrails hold, rolled back when one breaks.

:func:`evaluate_step` judges one step from a window of the prediction log; :func:`apply_decision`
turns the decision into the next rollout state. :class:`RolloutController` does both against the
state file and appends every transition, with its reason and time, to
``<data_root>/serving/rollout_history.jsonl``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlops_assets.serving.routing import (
    CHALLENGER,
    CHAMPION,
    RolloutState,
    read_state,
    state_path,
    write_state,
)
from mlops_assets.settings import data_paths

CANARY_STEPS: tuple[float, ...] = (0.05, 0.25, 0.50, 1.00)
HISTORY_FILE = "rollout_history.jsonl"

Action = Literal["advance", "hold", "rollback"]


REFERENCE_QUANTILES = 200  # size of the stored summary of the challenger's offline scores


@dataclass(frozen=True)
class Guardrails:
    """Bounds a canary step must stay within (challenger arm, over the step's window).

    Prediction-distribution sanity. The guardrail catches a challenger that scores differently in
    serving than it did offline (broken feature pipeline, training-serving skew, wrong model file),
    so the challenger's live scores are compared with its own *reference*: its scores on its
    evaluation holdout, recorded when the canary starts (``RolloutController.start_canary(...,
    challenger_reference_scores=...)``). ``max_mean_score_shift`` bounds |mean live score - mean
    reference score| and ``max_score_psi`` the PSI of the live scores against the reference.

    The champion's live scores are not a rollback reason when a reference exists: a legitimate
    retrain (after concept drift, say) is expected to score differently from the old champion. The
    champion comparison is still reported, as ``champion_mean_score_shift`` and
    ``champion_score_psi`` in the decision's metrics. Only when the canary has no reference (or one
    with fewer than ``min_distribution_samples`` scores) and ``champion_fallback`` is true are the
    same two bounds applied to challenger-vs-champion live scores, as before; with
    ``champion_fallback=False`` such a canary has no distribution guardrail.

    Sampling noise. Requests of one entity repeat its score (routing is sticky), so the distribution
    guardrails count one score per entity: a step's 136 requests from 50 entities are a sample of 50,
    not 136. And a small sample drawn from the reference itself shows a PSI past 0.25 by chance (a
    median near 0.35 for 50 entities on ten bins), so a score bound breaks only when the statistic
    exceeds both its configured limit and its *noise limit*: the ``1 - noise_alpha`` quantile of the
    same statistic over ``noise_draws`` samples of as many entities drawn from the baseline
    (:func:`noise_limits`). With hundreds of entities the noise limit falls below the configured
    one and the configured limit decides alone.
    """

    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 100.0
    max_mean_score_shift: float = 0.10  # |mean live challenger score - mean reference score|
    max_score_psi: float = 0.25  # PSI of live challenger scores against the reference scores
    min_requests: int = 200  # challenger requests needed before a step can advance
    min_error_requests: int = 20  # requests needed before an error rate can trigger a rollback
    min_distribution_samples: int = 100  # entities per side needed before mean shift / PSI are judged
    champion_fallback: bool = True  # without a reference, judge the shift against the champion's scores
    noise_alpha: float = 0.001  # chance that a step of entities drawn from the baseline breaks a score bound
    noise_draws: int = 5000  # Monte Carlo samples behind the noise limits


@dataclass(frozen=True)
class ScoreReference:
    """Compact summary of the challenger's offline scores: their count, exact mean and quantiles.

    ``quantiles`` are the sorted scores themselves when there are at most ``REFERENCE_QUANTILES`` of
    them, otherwise the quantiles at the mid-points ``(i + 0.5) / REFERENCE_QUANTILES``: an equally
    weighted pseudo-sample whose binned shares are within ``1 / REFERENCE_QUANTILES`` of the full
    sample's, so PSI against it matches PSI against all the scores.
    """

    count: int
    mean: float
    quantiles: tuple[float, ...]

    @classmethod
    def from_scores(cls, scores: Sequence[float], size: int = REFERENCE_QUANTILES) -> ScoreReference:
        """Summarize ``scores`` (non-finite values dropped)."""
        values = np.asarray(scores, dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            raise ValueError("a score reference needs at least one finite score")
        if len(values) <= size:
            points = np.sort(values)
        else:
            points = np.quantile(values, (np.arange(size) + 0.5) / size)
        return cls(len(values), float(values.mean()), tuple(round(float(v), 6) for v in points))

    def sample(self) -> np.ndarray:
        """The equally weighted pseudo-sample the PSI is computed against."""
        return np.asarray(self.quantiles, dtype=float)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {"count": self.count, "mean": self.mean, "quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreReference:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["count"]), float(data["mean"]), tuple(float(v) for v in data["quantiles"]))


@dataclass(frozen=True)
class ArmWindow:
    """One arm's requests in a window: counts and latencies of its requests, and one score per entity (the
    latest successful request's: a sticky entity asking again repeats its score, it is no new sample)."""

    requests: int
    errors: int
    latencies_ms: np.ndarray
    scores: np.ndarray

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_latency_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if len(self.latencies_ms) else 0.0


@dataclass(frozen=True)
class MetricsWindow:
    """Per-arm metrics over the requests of one rollout step."""

    arms: dict[str, ArmWindow]

    def arm(self, name: str) -> ArmWindow:
        return self.arms.get(name, ArmWindow(0, 0, np.array([]), np.array([])))


def metrics_window(log: pd.DataFrame, include_shadow: bool = True) -> MetricsWindow:
    """Per-arm counts, latencies and scores from prediction-log rows (see prediction_log.read_since).

    Replays (rows with an ``as_of``) are not traffic of the rollout and are left out.
    """
    from mlops_assets.serving.prediction_log import live

    arms = {}
    log = live(log)
    frame = log if include_shadow else log.loc[~log["shadow"].astype(bool)]
    for arm, rows in frame.groupby("arm", sort=True):
        ok = rows["status"] == "ok"
        scored = rows.loc[ok & rows["score"].notna()]
        if "entity_id" in scored.columns and scored["entity_id"].notna().all():
            if "ts" in scored.columns:
                scored = scored.sort_values("ts", kind="stable")
            scored = scored.drop_duplicates("entity_id", keep="last")
        arms[str(arm)] = ArmWindow(
            requests=len(rows),
            errors=int((~ok).sum()),
            latencies_ms=rows.loc[ok, "latency_ms"].to_numpy(dtype=float),
            scores=scored["score"].to_numpy(dtype=float),
        )
    return MetricsWindow(arms)


def score_psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of scores on equal-width bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    ref = np.histogram(np.clip(reference, 0, 1), edges)[0] / max(len(reference), 1)
    cur = np.histogram(np.clip(current, 0, 1), edges)[0] / max(len(current), 1)
    ref, cur = np.clip(ref, eps, None), np.clip(cur, eps, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def noise_limits(
    baseline: np.ndarray, n: int, alpha: float, draws: int, bins: int = 10, eps: float = 1e-4
) -> tuple[float, float]:
    """The ``1 - alpha`` quantiles of |mean shift| and PSI (as :func:`score_psi` counts it) between ``baseline``
    and ``draws`` samples of ``n`` scores drawn from it with replacement: what a step of ``n`` entities whose
    scores do follow the baseline shows by chance. Seeded by ``n`` and the baseline's size: the same window always
    gets the same verdict."""
    sample = np.clip(np.asarray(baseline, dtype=float), 0, 1)
    if not len(sample) or n < 1:
        return 0.0, 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    bin_of = np.clip(np.searchsorted(edges, sample, side="right") - 1, 0, bins - 1)
    ref = np.clip(np.bincount(bin_of, minlength=bins) / len(sample), eps, None)
    rng = np.random.default_rng([n, len(sample)])
    shifts, psis = [], []
    rows = max(1, 2_000_000 // n)  # draws per chunk: memory stays ~16 MB whatever n is
    for start in range(0, draws, rows):
        idx = rng.integers(0, len(sample), size=(min(rows, draws - start), n))
        shifts.append(np.abs(sample[idx].mean(axis=1) - sample.mean()))
        offsets = (np.arange(len(idx))[:, None] * bins + bin_of[idx]).ravel()
        counts = np.bincount(offsets, minlength=len(idx) * bins).reshape(len(idx), bins)
        cur = np.clip(counts / n, eps, None)
        psis.append(np.sum((cur - ref) * np.log(cur / ref), axis=1))
    return (
        float(np.quantile(np.concatenate(shifts), 1 - alpha)),
        float(np.quantile(np.concatenate(psis), 1 - alpha)),
    )


@dataclass(frozen=True)
class Decision:
    """What to do with the rollout now, why, and the numbers it was based on."""

    action: Action
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    promote: bool = False  # advancing past the last step: the challenger becomes the champion


def evaluate_step(
    state: RolloutState,
    window: MetricsWindow,
    guardrails: Guardrails = Guardrails(),
    reference: ScoreReference | None = None,
) -> Decision:
    """Advance, hold or roll back the current canary step from the challenger's window.

    ``reference`` is the challenger's offline score summary the score distribution is judged
    against (see :class:`Guardrails` for the semantics and the champion fallback).
    """
    if state.mode != "canary":
        return Decision("hold", f"mode is {state.mode!r}, not a canary rollout")
    ch, champ = window.arm(CHALLENGER), window.arm(CHAMPION)
    metrics: dict[str, float] = {
        "challenger_requests": float(ch.requests),
        "challenger_error_rate": ch.error_rate,
        "challenger_p99_latency_ms": ch.p99_latency_ms,
        "champion_requests": float(champ.requests),
    }
    broken = []
    if ch.requests >= guardrails.min_error_requests and ch.error_rate > guardrails.max_error_rate:
        broken.append(f"error rate {ch.error_rate:.3f} > {guardrails.max_error_rate}")
    if (
        len(ch.latencies_ms) >= guardrails.min_error_requests
        and ch.p99_latency_ms > guardrails.max_p99_latency_ms
    ):
        broken.append(f"p99 latency {ch.p99_latency_ms:.1f} ms > {guardrails.max_p99_latency_ms} ms")
    # score distributions are only compared on enough scores: PSI of a few dozen scores is mostly noise
    enough = guardrails.min_distribution_samples
    champion_shift = champion_psi = None
    if min(len(ch.scores), len(champ.scores)) >= enough:  # informative, or the fallback baseline
        champion_shift = abs(float(ch.scores.mean()) - float(champ.scores.mean()))
        champion_psi = score_psi(champ.scores, ch.scores)
        metrics.update({"champion_mean_score_shift": champion_shift, "champion_score_psi": champion_psi})
    metrics["challenger_entities"] = float(len(ch.scores))
    judged: tuple[str, float, float, np.ndarray] | None = None  # (baseline, mean shift, PSI, its sample)
    if reference is not None and reference.count >= enough:
        metrics["reference_samples"] = float(reference.count)
        if len(ch.scores) >= enough:
            sample = reference.sample()
            judged = (
                "reference",
                abs(float(ch.scores.mean()) - reference.mean),
                score_psi(sample, ch.scores),
                sample,
            )
    elif guardrails.champion_fallback and champion_shift is not None and champion_psi is not None:
        judged = ("champion", champion_shift, champion_psi, champ.scores)
    if judged is not None:
        baseline, shift, psi, sample = judged
        shift_noise, psi_noise = noise_limits(
            sample, len(ch.scores), guardrails.noise_alpha, guardrails.noise_draws
        )
        metrics.update(
            {
                "mean_score_shift": shift,
                "score_psi": psi,
                "mean_score_shift_noise_limit": shift_noise,
                "score_psi_noise_limit": psi_noise,
            }
        )
        shift_limit = max(guardrails.max_mean_score_shift, shift_noise)
        psi_limit = max(guardrails.max_score_psi, psi_noise)
        if shift > shift_limit:
            broken.append(f"mean score shift {shift:.3f} vs {baseline} > {_limit(shift_limit, shift_noise)}")
        if psi > psi_limit:
            broken.append(f"score PSI {psi:.3f} vs {baseline} > {_limit(psi_limit, psi_noise)}")
    if broken:
        return Decision("rollback", "guardrail broken: " + "; ".join(broken), metrics)
    if ch.requests < guardrails.min_requests:
        return Decision(
            "hold", f"{ch.requests} challenger requests so far, {guardrails.min_requests} needed", metrics
        )
    last = state.step >= len(CANARY_STEPS) - 1
    return Decision(
        "advance",
        "guardrails held over the step" + ("; rollout complete" if last else ""),
        metrics,
        promote=last,
    )


def _limit(limit: float, noise: float) -> str:
    """The bound a statistic broke, and where it came from when it is the noise limit."""
    return f"{limit:.3g} (noise limit for this many entities)" if noise >= limit else f"{limit:.3g}"


def apply_decision(state: RolloutState, decision: Decision) -> RolloutState:
    """The rollout state after ``decision``."""
    if decision.action == "rollback":
        return state.with_(mode="direct", challenger_share=0.0, step=0, reason=decision.reason)
    if decision.action == "hold":
        return state
    if decision.promote:
        return state.with_(
            mode="direct", challenger_share=0.0, step=len(CANARY_STEPS) - 1, reason=decision.reason
        )
    step = state.step + 1
    return state.with_(step=step, challenger_share=CANARY_STEPS[step], reason=decision.reason)


@dataclass(frozen=True)
class Transition:
    """One recorded change of the rollout."""

    at: str
    action: str
    reason: str
    from_mode: str
    to_mode: str
    from_share: float
    to_share: float
    experiment: str
    metrics: dict[str, float]
    promote: bool = False
    reference: dict[str, Any] | None = None  # start: the challenger's ScoreReference.to_dict()


class RolloutController:
    """Drives a canary rollout through the state file and records every transition."""

    def __init__(
        self,
        data_root: str | Path | None = None,
        state_file: str | Path | None = None,
        history_file: str | Path | None = None,
    ) -> None:
        self.data_root = data_root
        self.state_file = Path(state_file) if state_file else state_path(data_root)
        self.history_file = (
            Path(history_file) if history_file else data_paths(data_root).serving / HISTORY_FILE
        )
        self._lock = threading.Lock()

    def state(self) -> RolloutState:
        """The current rollout state."""
        return read_state(self.state_file)

    def _record(
        self,
        action: str,
        reason: str,
        before: RolloutState,
        after: RolloutState,
        metrics: dict[str, float] | None = None,
        promote: bool = False,
        reference: ScoreReference | None = None,
    ) -> Transition:
        t = Transition(
            datetime.now(UTC).isoformat(),
            action,
            reason,
            before.mode,
            after.mode,
            before.challenger_share,
            after.challenger_share,
            after.experiment,
            metrics or {},
            promote,
            reference.to_dict() if reference is not None else None,
        )
        self.history_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.history_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(t), sort_keys=True) + "\n")
        return t

    def set_mode(self, state: RolloutState, reason: str) -> RolloutState:
        """Write ``state`` (any mode) and record the change."""
        with self._lock:
            before = self.state()
            state = state.with_(reason=reason)
            write_state(state, self.state_file)
            self._record("set", reason, before, state)
            return state

    def start_canary(
        self,
        experiment: str,
        reason: str = "canary rollout started",
        champion_version: str | None = None,
        challenger_version: str | None = None,
        challenger_reference_scores: Sequence[float] | None = None,
    ) -> RolloutState:
        """Begin a canary at the first step under a new experiment salt.

        ``challenger_reference_scores`` are the challenger's scores on its evaluation holdout; a
        compact summary of them (:class:`ScoreReference`) is recorded with the start transition in
        the history file (the state file stays small) and the score-distribution guardrails judge
        the live challenger scores against it.
        """
        reference = (
            ScoreReference.from_scores(challenger_reference_scores)
            if challenger_reference_scores is not None
            else None
        )
        state = RolloutState(
            mode="canary",
            challenger_share=CANARY_STEPS[0],
            step=0,
            experiment=experiment,
            champion_version=champion_version,
            challenger_version=challenger_version,
        )
        with self._lock:
            before = self.state()
            state = state.with_(reason=reason)
            write_state(state, self.state_file)
            self._record("start", reason, before, state, reference=reference)
            return state

    def reference(self, state: RolloutState | None = None) -> ScoreReference | None:
        """The score reference recorded when the current canary started (None when it had none)."""
        state = state or self.state()
        if state.mode != "canary" or not self.history_file.exists():
            return None
        for line in reversed(self.history_file.read_text(encoding="utf-8").splitlines()):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("action") == "start":
                if record.get("experiment") != state.experiment or not record.get("reference"):
                    return None
                return ScoreReference.from_dict(record["reference"])
        return None

    def step(self, window: MetricsWindow, guardrails: Guardrails = Guardrails()) -> Decision:
        """Evaluate the current step on ``window``, write the next state and record it (holds are not written)."""
        with self._lock:
            before = self.state()
            decision = evaluate_step(before, window, guardrails, self.reference(before))
            if decision.action != "hold":
                after = apply_decision(before, decision)
                write_state(after, self.state_file)
                self._record(
                    decision.action, decision.reason, before, after, decision.metrics, decision.promote
                )
            return decision

    def step_from_log(
        self, guardrails: Guardrails = Guardrails(), log_directory: str | Path | None = None
    ) -> Decision:
        """:meth:`step` on the prediction-log records of the current experiment written since its step began
        (traffic of an earlier experiment still arriving in that window is not this canary's)."""
        from mlops_assets.serving.prediction_log import read_since

        state = self.state()
        since = (
            datetime.fromisoformat(state.changed_at) if state.changed_at else datetime(1970, 1, 1, tzinfo=UTC)
        )
        log = read_since(since, self.data_root, log_directory)
        if state.experiment and "experiment" in log.columns:
            log = log.loc[log["experiment"] == state.experiment]
        return self.step(metrics_window(log), guardrails)

    def rollback(self, reason: str) -> RolloutState:
        """Send all traffic back to the champion now."""
        with self._lock:
            before = self.state()
            after = before.with_(mode="direct", challenger_share=0.0, step=0, reason=reason)
            write_state(after, self.state_file)
            self._record("rollback", reason, before, after)
            return after

    def history(self) -> pd.DataFrame:
        """Every recorded transition, oldest first."""
        rows: list[dict[str, Any]] = []
        if self.history_file.exists():
            rows = [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]
        frame = pd.DataFrame(rows, columns=list(Transition.__dataclass_fields__))
        frame["at"] = pd.to_datetime(frame["at"], utc=True, format="ISO8601")
        return frame
