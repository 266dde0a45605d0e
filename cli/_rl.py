"""``paratune train`` and ``paratune transfer``: train a policy on a scenario pool, measure how it transfers.

:func:`register` adds them to the ``paratune`` app (``python -m paratune.cli train ...`` is how
``scripts/train_default_policy.sh`` trains the shipped policy). Torch and
stable-baselines3 are imported inside the commands, never at start-up.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .._limits import MAX_BUDGET, MAX_TIMESTEPS
from ..agents._settings import DEFAULT_ENV_ID, TRAIN, TRANSFER, VecEnv
from ._common import (
    MAX_PROCESSES,
    BatchOpt,
    ContextOpt,
    GranOpt,
    JsonOpt,
    MemoryOpt,
    ModelOpt,
    ObjectiveOpt,
    PhaseOpt,
    PlatformOpt,
    ScenarioOpt,
    SeedOpt,
    SeqOpt,
    at_most,
    console,
    finite_number,
    output_folder,
    print_json,
    user_errors,
)


@user_errors
def train_command(
    scenarios: Annotated[
        Path, typer.Option("--scenarios", help="Scenario pool: a YAML list of scenarios or a directory of them.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (policy.zip, policy.json, tb/, ...).")],
    algo: Annotated[str, typer.Option("--algo", help="maskable-ppo | ppo | a2c.")] = TRAIN.algo,
    timesteps: Annotated[
        int, typer.Option("--timesteps", "-n", min=1, callback=at_most(MAX_TIMESTEPS), help="Environment steps in all.")
    ] = TRAIN.timesteps,
    seed: SeedOpt = TRAIN.seed,
    n_envs: Annotated[
        int, typer.Option("--n-envs", min=1, max=MAX_PROCESSES, help="Parallel environments.")
    ] = TRAIN.n_envs,
    vec_env: Annotated[
        str, typer.Option("--vec-env", help="auto (subprocesses when --n-envs > 1) | subproc | dummy (one process).")
    ] = TRAIN.vec_env,
    granularity: Annotated[
        str | None, typer.Option("--granularity", "-g", help="layer | layers:k | ... (default: each scenario's).")
    ] = TRAIN.granularity,
    env_id: Annotated[str, typer.Option("--env", help="paratune/Mapping-v0 | paratune/Placement-v0.")] = TRAIN.env_id,
    random_setup: Annotated[
        float,
        typer.Option(
            "--random-setup",
            min=0.0,
            max=1.0,
            help="Mapping-v0: share of episodes whose setup (replicas, micro-batches, recompute) is drawn at random.",
        ),
    ] = TRAIN.random_setup,
    imitate: Annotated[
        bool,
        typer.Option("--imitate/--no-imitate", help="Mapping-v0: first clone the dp optimum of every pool scenario."),
    ] = TRAIN.imitate,
    imitate_setups: Annotated[
        int,
        typer.Option(
            "--imitate-setups",
            min=0,
            help="Mapping-v0, with --imitate: also clone the dp optimum under this many other setups per scenario.",
        ),
    ] = TRAIN.imitate_setups,
    techniques: Annotated[
        bool,
        typer.Option("--techniques/--no-techniques", help="Mapping-v0: add the technique-bundle setup decision."),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Train a policy (stable-baselines3) on a scenario pool; write OUT/policy.zip + OUT/policy.json."""
    from ..agents import train
    from ..agents._policy import ALGOS

    if algo not in ALGOS:  # before torch loads: a typo fails fast
        raise ValueError(f"unknown algo {algo!r}; allowed: {', '.join(ALGOS)}")
    _check_train_flags(vec_env, env_id, granularity, random_setup, imitate)
    output_folder(out, "--out")
    result = train(
        scenarios,
        algo=algo,
        timesteps=timesteps,
        seed=seed,
        out=out,
        n_envs=n_envs,
        granularity=granularity,
        env_id=env_id,
        vec_env=vec_env,
        progress_bar=progress and not as_json,
        random_setup=random_setup,
        imitate=imitate,
        imitate_setups=imitate_setups,
        techniques=techniques,
    )
    meta = result.metadata
    data = {
        "policy": str(result.policy_path),
        "metadata": str(result.policy_path.with_suffix(".json")),
        "tensorboard": str(Path(out) / "tb"),
        "algo": meta["algo"],
        "timesteps": meta["timesteps"],
        "wall_s": round(result.wall_s, 2),
        "scenarios": len(meta["scenarios"]),
    }
    if as_json:
        print_json(data)
        return
    table = Table(title=f"trained {escape(meta['algo'])} on {len(meta['scenarios'])} scenarios", show_header=False)
    for key, value in data.items():
        table.add_row(key, escape(str(value)))
    console.print(table)


def _check_train_flags(vec_env: str, env_id: str, granularity: str | None, random_setup: float, imitate: bool) -> None:
    """The flags ``train`` checks again under their library names (``vec_env``), named as typed, before OUT is made."""
    from ..graphs import parse_granularity

    if granularity is not None:
        parse_granularity(granularity)
    allowed = typing.get_args(VecEnv)
    if vec_env not in allowed:
        raise ValueError(f"--vec-env is {vec_env!r}; allowed: {', '.join(allowed)}")
    for flag, given in (("--random-setup", bool(random_setup)), ("--imitate", imitate)):
        if given and env_id != DEFAULT_ENV_ID:
            raise ValueError(f"{flag} applies to --env {DEFAULT_ENV_ID} only, not {env_id}")


@user_errors
def transfer_command(
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy zip (default: the shipped default policy).")
    ] = None,
    model: ModelOpt = None,
    platform: PlatformOpt = None,
    phase: PhaseOpt = "decode",
    objective: ObjectiveOpt = "",
    batch: BatchOpt = 1,
    seq: SeqOpt = 2048,
    context: ContextOpt = 0,
    granularity: GranOpt = "layer",
    memory_gib: MemoryOpt = None,
    scenario: ScenarioOpt = None,
    finetune_steps: Annotated[
        int,
        typer.Option(
            "--finetune-steps",
            min=0,
            callback=at_most(MAX_TIMESTEPS),
            help="Fine-tuning steps on this scenario (0: skip).",
        ),
    ] = TRANSFER.finetune_steps,
    rollouts: Annotated[
        int,
        typer.Option(
            "--rollouts",
            min=1,
            callback=at_most(MAX_BUDGET),
            help="Rollouts of the rl tuner (greedy, setup sweep, sampled).",
        ),
    ] = TRANSFER.rollouts,
    temperature: Annotated[
        float,
        typer.Option("--temperature", min=0.01, callback=finite_number, help="Temperature of the sampled rollouts."),
    ] = TRANSFER.temperature,
    seed: SeedOpt = TRANSFER.seed,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot and fine-tuned results of a policy on one scenario, with gaps to the dp optimum and heuristics."""
    from ..agents import transfer
    from ._common import problem_from_options

    limits: dict[str, Any] = {"memory_gib": memory_gib}
    fields = dict(phase=phase, objective=objective, batch=batch, seq=seq, context=context, granularity=granularity)
    problem = problem_from_options(scenario, model, platform, fields, limits, command=transfer_command)
    report = transfer(
        problem, policy=policy, finetune_steps=finetune_steps, rollouts=rollouts, seed=seed, temperature=temperature
    )
    data = report.to_dict()
    if as_json:
        print_json(data)
        return
    _print_transfer(data)


def _fmt_gap(gap: float | None) -> str:
    return "-" if gap is None else f"{100 * gap:+.2f}%"


def _print_transfer(d: dict[str, Any]) -> None:
    opt = d["optimum"]
    opt_text = "unknown" if opt["value"] is None else f"{opt['value']:.6g} ({opt['source']})"
    table = Table(title=escape(f"transfer of {d['policy']} to {d['problem']['name']}; optimum {opt_text}"))
    for col in ("result", "value", "gap to optimum", "gap to best heuristic", "rollouts", "wall s"):
        table.add_column(col)
    for row in d["rows"]:
        value = "infeasible" if row["value"] is None else f"{row['value']:.6g}"
        table.add_row(
            escape(row["label"]),
            value,
            _fmt_gap(row["gap_to_optimum"]),
            _fmt_gap(row["gap_to_heuristic"]),
            str(row.get("rollouts") or "-"),
            f"{row['wall_s']:.2f}",
        )
    console.print(table)
    for note in d["notes"]:
        console.print(f"note: {escape(note)}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``transfer`` to ``app`` (the main ``paratune`` app, or a test's)."""
    app.command("train")(train_command)
    app.command("transfer")(transfer_command)
