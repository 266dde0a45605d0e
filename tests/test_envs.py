"""The gymnasium environments: conformance over every registered id, determinism, fuzz, masks, rewards."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import paratune.envs as envs
from paratune.costmodel import Plan
from paratune.envs import ENV_IDS, FEATURE_MAX, N_ACTIONS, PLAN_ENV_IDS, TP_MENU, load_pool
from paratune.envs._features import TECHNIQUE_BUNDLES, TECHNIQUE_FEATURES, mapping_obs_spec
from paratune.envs._mapping import BLOCK, bundle_of, bundle_plan
from paratune.search import Problem, make_tuner

TINY = "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8"

#: Varied small scenarios for the fuzz: phases, objectives, platforms, tight memory, SLOs, merged tasks.
FUZZ_POOL: list[dict[str, Any]] = [
    {"name": "decode", "model": TINY, "platform": "dgx-a100", "phase": "decode", "batch": 8, "seq": 256},
    {"name": "prefill-x2", "model": TINY, "platform": "dgx-h100x2", "phase": "prefill", "batch": 4, "seq": 256},
    {"name": "train", "model": TINY, "platform": "dgx-a100", "phase": "train", "batch": 8, "seq": 128},
    {"name": "thr", "model": "gpt2", "platform": "mesh", "phase": "decode", "batch": 16, "objective": "throughput"},
    {"name": "multi", "model": TINY, "platform": "hgx-h200", "phase": "decode", "batch": 4, "objective": "tbt+memory"},
    {"name": "tight", "model": "llama2-7b:layers=8,hidden=1024,heads=8,kv_heads=8", "platform": "cpu-local",
     "phase": "decode", "batch": 2, "seq": 256, "limits": {"memory_gib": 0.5}},
    {"name": "hopeless", "model": TINY, "platform": "cpu-local", "phase": "train", "batch": 2, "seq": 128,
     "limits": {"memory_gib": 0.01}},
    {"name": "slo", "model": TINY, "platform": "dgx-a100", "phase": "decode", "batch": 8, "limits": {"tbt_ms": 0.01}},
    {"name": "merged", "model": "llama2-7b:layers=6,hidden=512,heads=8,kv_heads=8", "platform": "dgx-a100x2",
     "phase": "prefill", "batch": 2, "seq": 128, "granularity": "layers:2"},
]  # fmt: skip


def _masked_rollout(env: gym.Env, rng: np.random.Generator, **reset: Any) -> tuple[list[dict], float, list]:
    """One episode of uniformly random allowed actions; checks every observation on the way."""
    obs, info = env.reset(**reset)
    infos, trace = [info], [obs]
    raw = env.unwrapped
    while True:
        mask = raw.action_masks()
        assert mask.shape == (N_ACTIONS,) and mask.dtype == bool and mask.any()
        action = int(rng.choice(np.flatnonzero(mask)))
        obs, reward, terminated, truncated, info = env.step(action)
        assert not info.get("invalid_action")
        assert obs.dtype == np.float32 and np.isfinite(obs).all() and env.observation_space.contains(obs)
        infos.append(info)
        trace.append((action, obs))
        if terminated or truncated:
            return infos, reward, trace
        assert reward == 0.0


@pytest.fixture(scope="module")
def fuzz_pool() -> list[Problem]:
    return load_pool(FUZZ_POOL)


@pytest.mark.needs("stable_baselines3")
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(gym.make(env_id).unwrapped, warn=True)


@pytest.mark.parametrize("env_id", PLAN_ENV_IDS)
def test_same_seed_same_rollout(env_id: str, fuzz_pool: list[Problem]) -> None:
    runs = []
    for _ in range(2):
        env = gym.make(env_id, scenarios=fuzz_pool)
        rng = np.random.default_rng(3)
        episodes = []
        env.reset(seed=11)
        for _ in range(4):
            infos, reward, trace = _masked_rollout(env, rng)
            episodes.append((infos[0]["scenario"], reward, [a for a, _ in trace[1:]], trace[-1][1]))
        runs.append(episodes)
    for (s1, r1, a1, o1), (s2, r2, a2, o2) in zip(*runs, strict=True):
        assert (s1, r1, a1) == (s2, r2, a2)
        np.testing.assert_array_equal(o1, o2)


@pytest.mark.parametrize("env_id", PLAN_ENV_IDS)
def test_fuzz_random_masked_steps(env_id: str, fuzz_pool: list[Problem]) -> None:
    """10,000 random masked steps over many scenarios: no exception, no NaN, rewards bounded."""
    env = gym.make(env_id, scenarios=fuzz_pool)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    steps, seen = 0, set()
    while steps < 10_000:
        infos, reward, trace = _masked_rollout(env, rng)
        steps += len(trace) - 1
        seen.add(infos[0]["scenario"])
        end = infos[-1]
        assert math.isfinite(reward) and -(envs.REWARD_CLIP + 2) <= reward <= envs.REWARD_CLIP
        assert (reward >= -envs.REWARD_CLIP) == end["feasible"]
        assert end["reference"] > 0 and math.isfinite(end["reference"])
        if end["feasible"]:
            assert end["plan"].num_devices <= 16
    assert len(seen) == len(fuzz_pool)


def test_observation_is_fixed_size_and_named() -> None:
    small = gym.make("paratune/Mapping-v0", scenarios=[FUZZ_POOL[0]])
    big = gym.make("paratune/Mapping-v0", scenarios=[{"model": "llama2-70b", "platform": "dgx-a100x2", "batch": 16}])
    assert small.observation_space == big.observation_space
    assert small.reset(seed=0)[0].shape == big.reset(seed=0)[0].shape
    assert len(envs.mapping_feature_names()) == small.observation_space.shape[0]
    place = gym.make("paratune/Placement-v0")
    assert len(envs.placement_feature_names()) == place.observation_space.shape[0]
    assert float(small.observation_space.high.max()) == FEATURE_MAX
    assert isinstance(envs.OBS_SCHEMA_VERSION, int)


def test_megatron_plan_replayed_scores_zero() -> None:
    """Replaying the reference's own plan through the env gives reward 0."""
    problem = Problem(TINY, "dgx-h100x2", phase="prefill", batch=4, seq=256)
    plan = make_tuner("megatron").tune(problem).best_plan
    assert plan is not None
    env = gym.make("paratune/Mapping-v0", scenarios=[problem])
    env.reset(seed=0, options={"replicas": plan.replicas, "micro_batches": plan.micro_batches})
    starts = {st.layers[0]: st.tp for st in plan.stages}  # type: ignore[index]
    for layer in range(problem.n_layers):
        action = 1 + TP_MENU.index(starts[layer]) if layer in starts else 0
        _, reward, terminated, _, info = env.step(action)
    assert terminated and info["reference_source"] == "megatron"
    assert info["plan"].stages == plan.stages
    assert reward == pytest.approx(0.0, abs=1e-9)


def test_masks_are_honest_for_inference_memory(fuzz_pool: list[Problem]) -> None:
    """Inference memory is exact in the masks: a masked rollout over memory only fails when flagged doomed."""
    tight = next(p for p in fuzz_pool if p.name == "tight")
    assert tight.evaluate(make_tuner("megatron").tune(tight).best_plan).feasible  # type: ignore[arg-type]
    env = gym.make("paratune/Mapping-v0", scenarios=[tight])
    rng = np.random.default_rng(1)
    env.reset(seed=1)
    for _ in range(40):
        infos, _, _ = _masked_rollout(env, rng)
        end = infos[-1]
        over = end["metrics"].max_memory_bytes > tight.memory_limit_bytes
        assert not over or any(i.get("doomed") for i in infos[1:])


def test_hopeless_scenario_says_so(fuzz_pool: list[Problem]) -> None:
    env = gym.make("paratune/Mapping-v0", scenarios=[p for p in fuzz_pool if p.name == "hopeless"])
    infos, reward, _ = _masked_rollout(env, np.random.default_rng(0), seed=0)
    assert infos[-1]["doomed"] and not infos[-1]["feasible"]
    assert -(envs.REWARD_CLIP + 2) <= reward <= -(envs.REWARD_CLIP + 1)
    assert infos[-1]["reference_source"] == "lower-bound"


def test_masks_follow_heads_devices_and_merged_tasks(fuzz_pool: list[Problem]) -> None:
    merged = next(p for p in fuzz_pool if p.name == "merged")
    env = gym.make("paratune/Mapping-v0", scenarios=[merged], replicas=1, micro_batches=1)
    env.reset(seed=0)
    raw = env.unwrapped
    mask = raw.action_masks()
    assert not mask[0]  # block 0 opens a stage
    assert [TP_MENU[a - 1] for a in np.flatnonzero(mask)] == [1, 2, 4, 8]  # 8 heads, 8 GPUs per node
    _, _, done, _, _ = env.step(1 + TP_MENU.index(8))
    assert raw.action_masks()[0] and raw.action_masks()[1 + TP_MENU.index(8)]
    _, _, done, _, info = env.step(1 + TP_MENU.index(8))  # 16 GPUs: two stages of 8 use them all
    assert not info.get("invalid_action") and raw.action_masks().tolist() == [True] + [False] * (N_ACTIONS - 1)
    _, _, done, _, info = env.step(1 + TP_MENU.index(4))
    assert done and info["invalid_action"]  # replaced by the only allowed action: keep
    # six layers in blocks of two (three decisions): cuts only where a merged task starts
    assert [(st.layers, st.tp) for st in info["plan"].stages] == [((0, 1), 8), ((2, 5), 8)]


def test_invalid_action_is_replaced() -> None:
    env = gym.make("paratune/Mapping-v0", scenarios=[FUZZ_POOL[0]], replicas=1, micro_batches=1)
    env.reset(seed=0)
    _, _, _, _, info = env.unwrapped.step(0)  # keep at block 0 is not allowed
    assert info["invalid_action"]


def test_reset_options_and_errors(fuzz_pool: list[Problem]) -> None:
    env = gym.make("paratune/Mapping-v0", scenarios=fuzz_pool)
    assert env.reset(seed=0, options={"scenario": "train"})[1]["scenario"] == "train"
    other = Problem(TINY, "dgx-a100", phase="decode", batch=2, name="other")
    assert env.reset(options={"scenario": other})[1]["scenario"] == "other"
    with pytest.raises(ValueError, match="allowed: scenario"):
        env.reset(options={"scenerio": "train"})
    with pytest.raises(ValueError, match="must divide the batch"):
        env.reset(options={"scenario": "decode", "replicas": 3})
    with pytest.raises(ValueError, match="granularity 'nonsense' is not one of"):
        env.reset(options={"scenario": "decode", "granularity": "nonsense"})


def test_pool_from_yaml_and_duplicates(tmp_path: Any) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(
        "- {name: a, model: 'llama2-7b:layers=2,hidden=256,heads=4,kv_heads=4', platform: dgx-a100, batch: 4}\n"
        "- {name: b, model: gpt2, platform: mesh, phase: prefill, batch: 2, seq: 128}\n"
    )
    pool = load_pool(path)
    assert [p.name for p in pool] == ["a", "b"]
    env = gym.make("paratune/Mapping-v0", scenarios=str(path))
    assert env.reset(seed=0)[1]["scenario"] in {"a", "b"}
    with pytest.raises(ValueError, match="named 'a'"):
        load_pool([pool[0], pool[0]])
    with pytest.raises(ValueError, match="no such scenario"):
        load_pool(tmp_path / "missing.yaml")


def test_placement_on_op_graph_uses_the_simulator() -> None:
    problem = Problem("llama2-7b:layers=2,hidden=256,heads=4,kv_heads=4", "dgx-a100", phase="prefill", batch=2,
                      seq=128, granularity="op")  # fmt: skip
    env = gym.make("paratune/Placement-v0", scenarios=[problem], tp=2)
    infos, reward, trace = _masked_rollout(env, np.random.default_rng(0), seed=0)
    plan = infos[-1]["plan"]
    assert len(trace) - 1 == sum(1 for t in problem.graph("op").tasks if t.step == "forward")
    assert sorted(i for st in plan.stages for i in st.tasks) == sorted(t.id for t in problem.graph("op").tasks)
    assert all(st.tp == 2 for st in plan.stages) and math.isfinite(reward)
    assert infos[-1]["metrics"].latency_s == pytest.approx(problem.simulator("op").evaluate(plan).latency_s)


def test_placement_single_group_matches_reference_of_one_stage() -> None:
    """All tasks on group 0 at the megatron TP degree is megatron's plan for a one-node decode: reward ~ 0."""
    problem = Problem(TINY, "dgx-a100", phase="decode", batch=8, seq=256)
    env = gym.make("paratune/Placement-v0", scenarios=[problem], tp=8)
    env.reset(seed=0)
    done = False
    while not done:
        _, reward, done, _, info = env.step(0)
    assert info["feasible"] and info["reference_source"] == "megatron"
    assert reward == pytest.approx(0.0, abs=0.02)  # simulator vs analytic: within 1% of each other (+ slack)


@pytest.mark.needs("torch", "sb3_contrib")
def test_maskable_ppo_learns_without_error() -> None:
    import sb3_contrib
    import torch

    torch.set_num_threads(1)
    env = gym.make("paratune/Mapping-v0", scenarios=FUZZ_POOL[:3])
    model = sb3_contrib.MaskablePPO(
        "MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs={"net_arch": [32]}, verbose=0
    )
    model.learn(total_timesteps=256)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
    assert env.unwrapped.action_masks()[int(action)]


@pytest.mark.parametrize("name", ["decode", "prefill-x2", "tight", "train", "merged"])
def test_stage_memory_tables_match_the_evaluator(name: str, fuzz_pool: list[Problem]) -> None:
    """The masks' stage memory is the analytic evaluator's (inference: equal; training: a lower bound)."""
    problem = next(p for p in fuzz_pool if p.name == name)
    env = gym.make("paratune/Mapping-v0", scenarios=[problem])
    rng = np.random.default_rng(5)
    env.reset(seed=5)
    for _ in range(10):
        infos, _, _ = _masked_rollout(env, rng)
        raw = env.unwrapped
        sc, sp, plan = raw._sc, raw._split, infos[-1]["plan"]
        needs = [
            sp.stages[st.tp].need(sc.lo[sc.starts.index(st.layers[0])], sc.hi[sc.ends.index(st.layers[1])])
            for st in plan.stages
        ]
        actual = infos[-1]["metrics"].max_memory_bytes
        if problem.phase == "train":
            assert max(needs) <= actual * (1 + 1e-9)
            p, m = len(plan.stages), plan.micro_batches  # with 1F1B's in-flight count the tables are exact
            kept = [
                sp.stages[st.tp].need(
                    sc.lo[sc.starts.index(st.layers[0])], sc.hi[sc.ends.index(st.layers[1])], min(m, p - i)
                )
                for i, st in enumerate(plan.stages)
            ]
            assert max(kept) == pytest.approx(actual, rel=1e-9)
        else:
            assert max(needs) == pytest.approx(actual, rel=1e-9)


def _replay(env: gym.Env, plan: Any, train: bool) -> dict:
    """Step ``plan`` through the env from reset (setup decisions included); each action must be allowed."""
    from paratune.agents._imitate import plan_actions

    raw = env.unwrapped
    env.reset(seed=0)
    for action in plan_actions(raw, plan, train):
        assert raw.action_masks()[action], f"mask forbids action {action} of the plan"
        _, _, done, _, info = env.step(action)
    assert done
    return info


TIGHT_TRAIN = {
    "name": "tight-train",
    "model": "llama2-7b:layers=8,hidden=1024,heads=8,kv_heads=8",
    "platform": "dgx-a100",
    "phase": "train",
    "batch": 8,
    "seq": 512,
    "limits": {"memory_gib": 1.0},
}


@pytest.mark.parametrize("name", ["decode", "prefill-x2", "tight", "train", "merged", "tight-train"])
def test_masks_allow_every_feasible_plan(name: str, fuzz_pool: list[Problem]) -> None:
    """The memory masks never exclude a feasible plan: dp's optimum and random feasible plans replay through them.

    The random plans are uniform ones (every TP degree and stage count), kept
    when the cost model says they fit: each must replay with allowed actions only.
    """
    problem = next((p for p in fuzz_pool if p.name == name), None) or load_pool([TIGHT_TRAIN])[0]
    env = gym.make("paratune/Mapping-v0", scenarios=[problem])
    train = problem.phase == "train"
    optimum = make_tuner("dp").tune(problem).best_plan
    assert optimum is not None
    assert _replay(env, optimum, train)["feasible"]
    gran = problem.granularity
    n = problem.graph(gran).meta.n_layers
    step = 1 if gran == "layer" else int(gran.split(":")[1])
    replayed = 0
    for tp in problem.tp_degrees():
        for pp in range(1, min(n // step, problem.max_devices // tp) + 1):
            for rc in (False, True) if train else (False,):
                plan = Plan.uniform(n, tp=tp, pp=pp, recompute=rc)
                if any(st.layers[0] % step for st in plan.stages) or not problem.score(plan).feasible:
                    continue
                assert _replay(env, plan, train)["feasible"]
                replayed += 1
    assert replayed > 0


def test_random_setup_draws_allowed_setups_from_the_seed(fuzz_pool: list[Problem]) -> None:
    """random_setup=1: every episode starts at the blocks with an allowed setup; the seed fixes which."""
    train = [p for p in fuzz_pool if p.name in ("train", "decode", "prefill-x2")]

    def setups(seed: int) -> list[tuple[int, int, bool]]:
        env = gym.make("paratune/Mapping-v0", scenarios=train, random_setup=1.0)
        out = []
        env.reset(seed=seed)
        for _ in range(30):
            obs, _ = env.reset()
            raw = env.unwrapped
            assert raw._decision == BLOCK and obs[envs.mapping_feature_names().index("decision_block")] == 1.0
            assert raw._sc.batch % (raw.replicas * raw.micro_batches) == 0
            out.append((raw.replicas, raw.micro_batches, bool(raw.recompute)))
        return out

    first = setups(3)
    assert first == setups(3) and len(set(first)) > 3
    with pytest.raises(ValueError, match="random_setup must be a probability"):
        gym.make("paratune/Mapping-v0", random_setup=1.5)


def test_cut_features_price_uniform_tp_against_the_best_degree() -> None:
    """``uniform_time_vs_best``: 1 for the fastest allowed TP degree, more for the others, 0 where not allowed.

    Checked against a direct computation from the split's stage tables: the blocks
    left at TP ``t`` on ``left // t`` stages, ``m`` micro-batches in a pipeline.
    """
    problem = Problem("llama2-7b:layers=8", "dgx-a100", phase="prefill", batch=8, seq=512)
    env = gym.make("paratune/Mapping-v0", scenarios=[problem]).unwrapped
    names = envs.mapping_feature_names()
    obs, _ = env.reset(seed=0, options={"replicas": 1, "micro_batches": 4})
    sc, sp = env._sc, env._split
    feats = {t: float(obs[names.index(f"cut_tp{t}_uniform_time_vs_best")]) for t in TP_MENU}
    left, rest = problem.max_devices, sc.n_blocks
    expect = {}
    for t in sc.tps:
        n = min(left // t, rest)
        st = sp.stages[t]
        expect[t] = (st.time[sc.hi[-1]] - st.time[sc.lo[0]]) * (4 + n - 1) / (n * 4)
    best = min(expect.values())
    assert set(sc.tps) == {1, 2, 4, 8}
    for t in TP_MENU:
        want = min(FEATURE_MAX, expect[t] / best) if t in expect else 0.0
        assert feats[t] == pytest.approx(want, rel=1e-5)
    assert min(v for v in feats.values() if v > 0) == pytest.approx(1.0)
    assert len({round(v, 6) for t, v in feats.items() if t in expect}) > 1  # the degrees differ: it says something


# -- the techniques decision (Mapping-v0, techniques=True) -------------------------------------------------


@pytest.mark.needs("stable_baselines3")
def test_check_env_with_techniques() -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    pool = [p for p in FUZZ_POOL if p["name"] in ("train", "decode")]
    check_env(gym.make("paratune/Mapping-v0", scenarios=pool, techniques=True).unwrapped, skip_render_check=True)
    sb3_check_env(gym.make("paratune/Mapping-v0", scenarios=pool, techniques=True).unwrapped, warn=True)


def test_default_observation_keeps_schema_3() -> None:
    """Without the option the observation is the one the shipped policy was trained on (schema 3, 124 values)."""
    assert mapping_obs_spec() == (envs.OBS_SCHEMA_VERSION, 124) and envs.OBS_SCHEMA_VERSION == 3
    version, size = mapping_obs_spec(True)
    assert version == 4 and size == 124 + len(TECHNIQUE_FEATURES)
    env = gym.make("paratune/Mapping-v0", techniques=True)
    assert env.observation_space.shape == (size,) and len(envs.mapping_feature_names(True)) == size
    assert gym.make("paratune/Mapping-v0").observation_space.shape == (124,)


def test_techniques_decision_puts_the_bundle_on_the_plan(fuzz_pool: list[Problem]) -> None:
    env = gym.make("paratune/Mapping-v0", scenarios=fuzz_pool, techniques=True)
    raw = env.unwrapped
    names = envs.mapping_feature_names(True)
    for k, (_, fields) in enumerate(TECHNIQUE_BUNDLES):
        obs, _ = env.reset(seed=0, options={"scenario": "train", "replicas": 2, "micro_batches": 2, "recompute": False})
        assert raw._decision == 3 and obs[names.index("decision_techniques")] == 1.0
        assert obs[names.index("decision_block")] == 0.0 and not obs[names.index("bundle_none") :][1:].any()
        mask = raw.action_masks()
        assert mask[: len(TECHNIQUE_BUNDLES)].all() and not mask[len(TECHNIQUE_BUNDLES) :].any()
        obs, *_ = env.step(k)
        assert raw._decision == BLOCK and obs[names.index(f"bundle_{TECHNIQUE_BUNDLES[k][0]}")] == 1.0
        rng = np.random.default_rng(k)
        while True:
            obs, _, done, _, info = env.step(int(rng.choice(np.flatnonzero(raw.action_masks()))))
            if done:
                break
        plan = info["plan"]
        assert plan == bundle_plan(
            dataclasses.replace(plan, **{f: Plan.__dataclass_fields__[f].default for f in fields}), k
        )
        assert bundle_of(plan) == k and plan.problems(raw._problem.graph(), raw._problem.resolved_platform) == []
    # inference: no techniques decision; a bundle cannot be fixed on an env without the decision
    env.reset(seed=0, options={"scenario": "decode", "replicas": 1, "micro_batches": 1})
    assert raw._decision == BLOCK and raw.bundle == 0
    with pytest.raises(ValueError, match="no techniques decision"):
        gym.make("paratune/Mapping-v0", scenarios=fuzz_pool).reset(options={"scenario": "train", "techniques": 2})
    with pytest.raises(ValueError, match="bundle index"):
        env.reset(options={"scenario": "train", "techniques": 9})


@pytest.mark.parametrize("bundle", range(1, len(TECHNIQUE_BUNDLES)))
@pytest.mark.parametrize("name", ["train", "tight-train"])
def test_stage_memory_tables_match_the_evaluator_under_bundles(
    name: str, bundle: int, fuzz_pool: list[Problem]
) -> None:
    """Under a bundle the tables are the analytic evaluator's memory too (ZeRO, SP, selective, ZeRO-3 buffers)."""
    problem = next((p for p in fuzz_pool if p.name == name), None) or load_pool([TIGHT_TRAIN])[0]
    env = gym.make("paratune/Mapping-v0", scenarios=[problem], techniques=True)
    rng = np.random.default_rng(bundle)
    env.reset(seed=bundle)
    checked = 0
    for _ in range(12):
        infos, _, _ = _masked_rollout(env, rng, options={"techniques": bundle})
        raw = env.unwrapped
        sc, sp, plan = raw._sc, raw._split, infos[-1]["plan"]
        assert bundle_of(plan) is not None and plan.zero == TECHNIQUE_BUNDLES[bundle][1].get("zero", 0)
        p, m = len(plan.stages), plan.micro_batches
        kept = [
            sp.stages[st.tp].need(
                sc.lo[sc.starts.index(st.layers[0])], sc.hi[sc.ends.index(st.layers[1])], min(m, p - i)
            )
            for i, st in enumerate(plan.stages)
        ]
        metrics = infos[-1]["metrics"]
        if metrics.latency_s == math.inf:
            continue
        assert max(kept) == pytest.approx(metrics.max_memory_bytes, rel=1e-9), plan.to_dict()
        checked += 1
    assert checked >= 6


def test_masks_allow_every_feasible_plan_under_bundles() -> None:
    """Plans that fit only with a bundle (ZeRO shards the state over replicas) replay through the masks.

    On the tight scenario (1 GiB per device) 14 uniform layouts fit only with a bundle: the env
    without the option cannot build them, the env with it must allow each one's actions.
    """
    problem = load_pool([TIGHT_TRAIN])[0]
    env = gym.make("paratune/Mapping-v0", scenarios=[problem], techniques=True)
    n = problem.graph().meta.n_layers
    only: set[tuple[int, ...]] = set()
    replayed = 0
    for tp in problem.tp_degrees():
        for pp in (1, 2, 4, 8):
            for r in (1, 2, 4, 8):
                if tp * pp * r > problem.max_devices:
                    continue
                for m in (1, 2, 4):
                    if problem.batch % (r * m):
                        continue
                    for rc in (False, True):
                        base = Plan.uniform(n, tp=tp, pp=pp, micro_batches=m, recompute=rc, replicas=r)
                        plain = problem.score(base).feasible
                        for k in range(len(TECHNIQUE_BUNDLES)):
                            plan = bundle_plan(base, k)
                            if not problem.score(plan).feasible:
                                continue
                            info = _replay(env, plan, True)
                            assert info["feasible"] and info["plan"] == plan
                            replayed += 1
                            if not plain:
                                only.add((tp, pp, r, m, rc))
    assert len(only) >= 10 and replayed > len(only)
