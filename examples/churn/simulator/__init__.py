"""The churn example's simulator: a subscription shop's customers, events and churn labels as landing files.

`mlops demo` calls :func:`simulate` with the sizes from the example's spec (``demo:``); the full
simulator, with its knobs, is :func:`world.simulate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .scenarios import SCENARIOS, Scenario, ScenarioInfo, list_scenarios, parse_scenario
from .world import AppliedScenario, SimulationSummary, WorldParams, churn_logit
from .world import simulate as simulate_world


def simulate(
    out: Path, *, days: int, start: str, seed: int, size: int, scenarios: Sequence[str] = ()
) -> SimulationSummary:
    """Write ``days`` days of landing files for ``size`` customers under ``out`` (events/, labels/, customers/)."""
    return simulate_world(out=out, customers=size, days=days, start=start, seed=seed, scenarios=scenarios)


__all__ = [
    "SCENARIOS",
    "AppliedScenario",
    "Scenario",
    "ScenarioInfo",
    "SimulationSummary",
    "WorldParams",
    "churn_logit",
    "list_scenarios",
    "parse_scenario",
    "simulate",
    "simulate_world",
]
