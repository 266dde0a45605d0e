"""Environment speed: steps per second with a random masked policy (a benchmark, not a timed test).

Prints, and with ``--json`` writes as one JSON object (also to ``--out``):

* ``mapping_steps_per_s`` — ``paratune/Mapping-v0`` on llama2-70b decode (batch 16,
  context 2048) at layer granularity on dgx-a100x2 (16 A100s), replicas and
  micro-batches decided by the agent, one core (target >= 5,000/s). Resets are
  counted (an episode is 2 setup + 80 block steps, its final plan priced by the
  analytic evaluator; the policy's own sampling is inside the clock too); the
  scenario's tables and reference, and the tables of each batch split, are built
  during 5,000 untimed warm-up steps (the cost a pool pays once per scenario;
  the first reset is reported as ``mapping_first_reset_s``).
* ``placement_steps_per_s`` — ``paratune/Placement-v0`` on the same problem at layer
  granularity (a TP decision, then 81 forward tasks; the end of each episode runs
  the discrete-event simulator).

The policy draws uniformly among the actions ``action_masks()`` allows, from a
seeded generator; the env is stepped directly (``env.unwrapped``) so the figure
is the env's, not the wrappers'.

Run: ``python benchmarks/env_speed.py [--json] [--out FILE] [--steps N]``.
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

TARGETS = {"mapping_steps_per_s": 5_000}
SCENARIO = {
    "name": "llama2-70b-decode-a100x2",
    "model": "llama2-70b",
    "platform": "dgx-a100x2",
    "phase": "decode",
    "batch": 16,
    "seq": 2048,
    "context": 2048,
    "granularity": "layer",
}


def measure(env_id: str, steps: int, seed: int = 0, warmup: int = 5_000) -> dict[str, Any]:
    """Steps/s of ``env_id`` on :data:`SCENARIO` with a random masked policy (after ``warmup`` untimed steps)."""
    import gymnasium as gym
    import numpy as np

    import paratune.envs  # noqa: F401  (registers the ids)

    env = gym.make(env_id, scenarios=[SCENARIO]).unwrapped
    t0 = time.perf_counter()
    env.reset(seed=seed)
    first_reset = time.perf_counter() - t0
    rng = np.random.default_rng(seed)

    def pick() -> int:
        valid = np.flatnonzero(env.action_masks())
        return int(valid[rng.integers(len(valid))])

    for _ in range(warmup):  # builds the tables of the batch splits the policy visits
        if env.step(pick())[2]:
            env.reset()
    episodes, feasible, done_steps = 0, 0, 0
    t0 = time.perf_counter()
    env.reset(seed=seed)
    while done_steps < steps:
        _, _, terminated, truncated, info = env.step(pick())
        done_steps += 1
        if terminated or truncated:
            episodes += 1
            feasible += bool(info["feasible"])
            env.reset()
    wall = time.perf_counter() - t0
    key = env_id.split("/")[1].split("-")[0].lower()
    return {
        f"{key}_steps_per_s": done_steps / wall,
        f"{key}_episodes": episodes,
        f"{key}_feasible_fraction": feasible / max(episodes, 1),
        f"{key}_first_reset_s": first_reset,
    }


def main() -> None:
    from _figures import emit, figure_parser, provenance

    parser = figure_parser(__doc__)
    parser.add_argument("--steps", type=int, default=50_000, help="steps timed per environment")
    args = parser.parse_args()

    figures: dict[str, Any] = {"scenario": SCENARIO, "steps": args.steps}
    figures.update(measure("paratune/Mapping-v0", args.steps))
    figures.update(measure("paratune/Placement-v0", max(1, args.steps // 5)))
    figures["targets"] = TARGETS
    figures["meets_targets"] = {k: figures[k] >= v for k, v in TARGETS.items()}
    figures["provenance"] = provenance()
    if emit(figures, args.out, args.json):
        return
    for key in ("mapping_steps_per_s", "placement_steps_per_s"):
        target = TARGETS.get(key)
        verdict = "" if target is None else f"  (target {target:,}) " + ("ok" if figures[key] >= target else "MISSED")
        print(f"{key:>24}: {figures[key]:>12,.0f}{verdict}")
    print(f"{'mapping_first_reset_s':>24}: {figures['mapping_first_reset_s']:>12.3f}")


if __name__ == "__main__":
    main()
