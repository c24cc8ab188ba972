"""The churn world simulator: customers, events and labels as landing files, with switchable scenarios."""

from mlops_assets.simulate.scenarios import Scenario, ScenarioInfo, list_scenarios, parse_scenario
from mlops_assets.simulate.world import AppliedScenario, SimulationSummary, WorldParams, churn_logit, simulate

__all__ = [
    "AppliedScenario",
    "Scenario",
    "ScenarioInfo",
    "SimulationSummary",
    "WorldParams",
    "churn_logit",
    "list_scenarios",
    "parse_scenario",
    "simulate",
]
