"""A canary rollout on simulated traffic against a real local server, printing each step (for ``make demo``)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlops_assets.serving.app import MappingFeatureSource, ServingConfig, create_app
from mlops_assets.serving.models import InMemoryModelSource
from mlops_assets.serving.rollout import CANARY_STEPS, Decision, Guardrails, RolloutController
from mlops_assets.serving.routing import MemoryAssignments


class FailingModel:
    """Stands in for a broken challenger: every prediction raises."""

    def __init__(self, features: list[str]) -> None:
        self.feature_names_in_ = np.array(features, dtype=object)

    def predict_proba(self, frame: Any) -> np.ndarray:
        raise RuntimeError("simulated challenger failure")


class LocalServer:
    """The serving app under uvicorn in a background thread on 127.0.0.1 (``port``, or a free one)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        if port:
            self.port = int(port)
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the serving app did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def predict(self, key: str, entity: Any) -> dict:
        """POST /predict for one entity (features from the app's feature source)."""
        request = urllib.request.Request(
            self.url + "/predict",
            json.dumps({key: entity}).encode(),
            {"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


def canary_demo(
    data_root: str | Path,
    champion: Any,
    challenger: Any,
    feature_rows: Mapping[str, Mapping[str, Any]],
    key: str = "entity_id",
    requests_per_step: int = 200,
    max_batches_per_step: int = 20,
    break_challenger_at_step: int | None = None,
    seed: int = 0,
    printer: Callable[[str], None] = print,
    challenger_reference_scores: Sequence[float] | None = None,
    guardrails: Guardrails | None = None,
) -> list[Decision]:
    """Run a canary 5% -> 25% -> 50% -> 100% on simulated requests; optionally break the challenger mid-way.

    ``challenger_reference_scores`` (the challenger's scores on its holdout) are what the score
    guardrails compare its live scores with; without them the champion's live scores are used.
    ``guardrails`` default to small-sample bounds (100 challenger requests and scores per step).
    """
    source = InMemoryModelSource({"champion": ("1", champion), "challenger": ("2", challenger)})
    config = ServingConfig(
        data_root=data_root,
        model_source=source,
        feature_source=MappingFeatureSource(feature_rows),
        entity_key=key,
        assignments=MemoryAssignments(),
        poll_interval_s=0.1,
    )
    controller = RolloutController(data_root)
    guardrails = guardrails or Guardrails(
        min_requests=100, min_error_requests=10, min_distribution_samples=100
    )
    entities = list(feature_rows)
    rng = np.random.default_rng(seed)
    decisions: list[Decision] = []
    with LocalServer(create_app(config)) as server:
        controller.start_canary(
            "canary-demo",
            champion_version="1",
            challenger_version="2",
            challenger_reference_scores=challenger_reference_scores,
        )
        baseline = "its holdout scores" if challenger_reference_scores is not None else "the champion"
        printer(
            f"canary started: {CANARY_STEPS[0]:.0%} of entities on the challenger "
            f"(score guardrails against {baseline})"
        )
        for step in range(len(CANARY_STEPS)):
            if break_challenger_at_step is not None and step == break_challenger_at_step:
                source.set(
                    "challenger", "3", FailingModel(list(getattr(challenger, "feature_names_in_", [])))
                )
                time.sleep(0.5)  # the poller swaps the model in
                printer("challenger replaced by a failing version")
            sent, on_challenger = 0, 0
            for _ in range(
                max_batches_per_step
            ):  # a step holds until the challenger has seen enough requests
                answers = [server.predict(key, str(c)) for c in rng.choice(entities, requests_per_step)]
                sent += len(answers)
                on_challenger += sum(a["arm"] == "challenger" for a in answers)
                decision = controller.step_from_log(guardrails)
                if decision.action != "hold":
                    break
            decisions.append(decision)
            state = controller.state()
            m = decision.metrics
            printer(
                f"step {step + 1}: {sent} requests, {on_challenger / sent:.0%} answered by the challenger "
                f"({m.get('challenger_requests', 0):.0f} routed to it, error rate "
                f"{m.get('challenger_error_rate', 0):.1%}"
                + (
                    f", score PSI {m['score_psi']:.3f} / mean shift {m['mean_score_shift']:.3f}"
                    if "score_psi" in m
                    else ""
                )
                + (f", PSI vs champion {m['champion_score_psi']:.3f}" if "champion_score_psi" in m else "")
                + ") -> "
                f"{decision.action}: {decision.reason} (now {state.mode}"
                + (f" {state.challenger_share:.0%})" if state.mode == "canary" else ")")
            )
            if decision.action != "advance" or decision.promote:
                break
    if decisions and decisions[-1].promote:
        printer("rollout complete: promote the challenger to champion")
    return decisions


def send_traffic(
    server: LocalServer, key: str, entities: Sequence[Any], requests: int, rng: np.random.Generator
) -> dict[str, int]:
    """``requests`` POST /predict calls for entities drawn at random; how many each arm answered."""
    answered: dict[str, int] = {}
    for entity in rng.choice(np.asarray(list(entities), dtype=object), requests):
        arm = server.predict(key, entity).get("arm", "none")
        answered[arm] = answered.get(arm, 0) + 1
    return answered
