"""Rollout state and request routing: direct, shadow, canary, A/B and Thompson-sampling bandit.

The rollout state is one JSON file, ``<data_root>/serving/rollout_state.json``, written through a
temporary name and a rename by the deployment side and read by every serving process.

Stickiness. In canary and A/B modes a entity's arm is a pure function of
``sha256(salt + ":" + entity_id)`` mapped to a bucket in [0, 1): the challenger takes the
buckets below its share. Raising the canary share from 5% to 25% therefore only moves entities
from champion to challenger, never back. In bandit mode the first request of a entity draws
one Thompson sample per arm from the Beta posteriors (random stream seeded by the experiment
seed and the entity's hash, so a run is reproducible) and takes the arm with the largest
draw; that assignment is stored in an :class:`AssignmentStore` keyed by (experiment, entity)
with insert-if-absent semantics, so later requests, later posteriors and other worker
processes all return the first assignment. A new experiment (new salt) starts fresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from mlops_assets.settings import data_paths
from mlops_assets.storage import write_file_atomic

Mode = Literal["direct", "shadow", "canary", "ab", "bandit"]
MODES: tuple[str, ...] = ("direct", "shadow", "canary", "ab", "bandit")
CHAMPION = "champion"
CHALLENGER = "challenger"
STATE_FILE = "rollout_state.json"


@dataclass(frozen=True)
class ArmPosterior:
    """Beta posterior of an arm's reward rate: ``Beta(alpha, beta)``."""

    alpha: float = 1.0
    beta: float = 1.0


@dataclass(frozen=True)
class RolloutState:
    """What the serving app routes by: the mode, the challenger's share and the experiment."""

    mode: Mode = "direct"
    challenger_share: float = 0.0  # canary: share of entities on the challenger; ab: share on arm B
    experiment: str = "default"  # salt of the sticky hash; a new experiment reshuffles entities
    step: int = 0  # index of the canary step (see rollout.CANARY_STEPS)
    seed: int = 0  # bandit: seed of the Thompson draws
    posteriors: Mapping[str, ArmPosterior] = field(default_factory=dict)  # bandit: per arm
    champion_version: str | None = None  # informative: the versions the rollout was started with
    challenger_version: str | None = None
    changed_at: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.challenger_share <= 1.0:
            raise ValueError(f"challenger_share must be within [0, 1], got {self.challenger_share}")
        if not self.experiment:
            raise ValueError("experiment (the routing salt) must not be empty")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        out = asdict(self)
        out["posteriors"] = {k: asdict(v) for k, v in self.posteriors.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        data = dict(data)
        data["posteriors"] = {k: ArmPosterior(**v) for k, v in (data.get("posteriors") or {}).items()}
        return cls(**data)

    def with_(self, **changes: Any) -> RolloutState:
        """A copy with ``changes`` and a fresh ``changed_at``."""
        changes.setdefault("changed_at", datetime.now(UTC).isoformat())
        return replace(self, **changes)


def state_path(data_root: str | Path | None = None) -> Path:
    """``<data_root>/serving/rollout_state.json``."""
    return data_paths(data_root).serving / STATE_FILE


def read_state(path: str | Path) -> RolloutState:
    """The rollout state in ``path``; direct-to-champion when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return RolloutState()
    return RolloutState.from_dict(json.loads(path.read_text()))


def write_state(state: RolloutState, path: str | Path) -> Path:
    """Write ``state`` atomically (temporary file + rename)."""
    if not state.changed_at:
        state = state.with_()
    return write_file_atomic(json.dumps(state.to_dict(), indent=2, sort_keys=True).encode(), Path(path))


class StateFile:
    """A rollout state file read again only when its mtime, size or inode changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._key: tuple[int, int, int] | None = None
        self._state = RolloutState()
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def get(self) -> RolloutState:
        """The current state (the last good one if the file is unreadable)."""
        try:
            st = os.stat(self.path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            key = (0, 0, 0)
        if key != self._key:
            with self._lock:
                if key != self._key:
                    try:
                        self._state = read_state(self.path)
                        self.last_error = None
                    except (ValueError, TypeError, OSError) as exc:
                        self.last_error = f"{type(exc).__name__}: {exc}"
                    self._key = key
        return self._state


def bucket(entity_id: str, salt: str) -> float:
    """The entity's position in [0, 1) for an experiment: uniform, stable, independent across salts."""
    digest = hashlib.sha256(f"{salt}:{entity_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class AssignmentStore(Protocol):
    """Remembers bandit assignments: the first one stored for (experiment, entity) wins."""

    def get_or_set(self, experiment: str, entity_id: str, arm: str) -> str:
        """The stored arm, storing ``arm`` when there was none."""


class MemoryAssignments:
    """Assignments in a dict (one process)."""

    def __init__(self) -> None:
        self._arms: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def get_or_set(self, experiment: str, entity_id: str, arm: str) -> str:
        with self._lock:
            return self._arms.setdefault((experiment, entity_id), arm)


class SqliteAssignments:
    """Assignments in a SQLite file shared by every worker process (insert-if-absent, then read)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS assignments (experiment TEXT NOT NULL, entity_id TEXT NOT NULL,"
                " arm TEXT NOT NULL, assigned_at TEXT NOT NULL, PRIMARY KEY (experiment, entity_id))"
            )

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            con.execute("PRAGMA journal_mode = WAL")
            self._local.con = con
        return con

    def get_or_set(self, experiment: str, entity_id: str, arm: str) -> str:
        con = self._conn()
        row = con.execute(
            "SELECT arm FROM assignments WHERE experiment = ? AND entity_id = ?", (experiment, entity_id)
        ).fetchone()
        if row is not None:
            return row[0]
        con.execute(
            "INSERT OR IGNORE INTO assignments VALUES (?, ?, ?, ?)",
            (experiment, entity_id, arm, datetime.now(UTC).isoformat()),
        )
        return con.execute(
            "SELECT arm FROM assignments WHERE experiment = ? AND entity_id = ?", (experiment, entity_id)
        ).fetchone()[0]


@dataclass(frozen=True)
class Assignment:
    """Which arm answers a request, and whether the challenger also scores in the shadow."""

    arm: str
    shadow: bool = False


def thompson_arm(state: RolloutState, entity_id: str) -> str:
    """Arm with the largest Beta posterior draw, from a stream seeded by (seed, experiment, entity)."""
    arms = sorted(state.posteriors) or [CHAMPION, CHALLENGER]
    digest = hashlib.sha256(f"{state.seed}:{state.experiment}:{entity_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    draws = [rng.beta(p.alpha, p.beta) for p in (state.posteriors.get(a, ArmPosterior()) for a in arms)]
    return arms[int(np.argmax(draws))]


def assign(state: RolloutState, entity_id: str, assignments: AssignmentStore | None = None) -> Assignment:
    """Route one entity under ``state`` (sticky; see the module docstring)."""
    mode = state.mode
    if mode == "direct":
        return Assignment(CHAMPION)
    if mode == "shadow":
        return Assignment(CHAMPION, shadow=True)
    if mode in ("canary", "ab"):
        on_challenger = bucket(entity_id, state.experiment) < state.challenger_share
        return Assignment(CHALLENGER if on_challenger else CHAMPION)
    arm = thompson_arm(state, entity_id)
    if assignments is not None:
        arm = assignments.get_or_set(state.experiment, entity_id, arm)
    return Assignment(arm)


def update_posteriors(
    state: RolloutState, rewards: Mapping[str, tuple[int, int]], prior: ArmPosterior = ArmPosterior()
) -> RolloutState:
    """Bandit state with posteriors ``Beta(prior.alpha + successes, prior.beta + failures)`` per arm.

    ``rewards`` maps arm -> (successes, trials) observed so far in the experiment.
    """
    posteriors = {arm: ArmPosterior(prior.alpha + s, prior.beta + (n - s)) for arm, (s, n) in rewards.items()}
    for arm in (CHAMPION, CHALLENGER):
        posteriors.setdefault(arm, prior)
    return state.with_(posteriors=posteriors)
