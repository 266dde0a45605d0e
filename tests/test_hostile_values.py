"""Hostile values (issue 15, items 2, 3 and 6): sizes without bounds, non-finite numbers, wrong types in files.

Each CLI case runs in one child process with a memory limit, in its own folder under its own time limit
(``run_batch`` in ``tests/_hostile.py``), and must end in exit 2 with one ``error:`` line that names what to
fix, no traceback and no file written. The tables are the count the issue asks for; the library tests below
them pin the pieces (divisors from factors, Limits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _hostile import Run, assert_refused, run_batch

from paratune._limits import MAX_BATCH, MAX_DEVICES, MAX_FILE_BYTES, MAX_LAYERS, parse_json
from paratune.costmodel import Plan, get_platform
from paratune.costmodel._divisors import divisors, prime_factors
from paratune.graphs import get_model
from paratune.problem import Limits, Problem

EVAL = ["evaluate", "-m", "llama2-7b", "-p", "dgx-a100"]
TUNE = ["tune", "-t", "megatron", "--no-optimum"]
TUNE7 = [*TUNE, "-m", "llama2-7b", "-p", "dgx-a100"]
TRANSFER = ["transfer", "-m", "llama2-7b:layers=4", "-p", "dgx-a100"]
TRAIN = ["train", "--scenarios", "x", "--out", "y"]

# -- the command line: overrides and options whose size drives work ---------------------------------------------
OPTION_CASES = [
    ("layers", ["evaluate", "-m", "llama2-7b:layers=100000000", "-p", "dgx-a100"], ["layers", "10,000"]),
    ("hidden", ["evaluate", "-m", "llama2-7b:hidden=1000000000000", "-p", "dgx-a100"], ["hidden"]),
    ("heads", ["evaluate", "-m", "llama2-7b:heads=100000000,kv_heads=1", "-p", "dgx-a100"], ["heads"]),
    ("ffn", ["evaluate", "-m", "llama2-7b:ffn=99999999999", "-p", "dgx-a100"], ["ffn"]),
    ("vocab", ["evaluate", "-m", "llama2-7b:vocab=99999999999", "-p", "dgx-a100"], ["vocab"]),
    ("experts", ["evaluate", "-m", "mixtral-8x7b:experts=100000000", "-p", "dgx-a100"], ["experts"]),
    ("layers-float", ["evaluate", "-m", "llama2-7b:layers=4.5", "-p", "dgx-a100"], ["layers", "integer"]),
    ("layers-exp", ["evaluate", "-m", "llama2-7b:layers=1e9", "-p", "dgx-a100"], ["layers", "integer"]),
    ("layers-huge-digits", ["evaluate", "-m", "llama2-7b:layers=" + "9" * 5000, "-p", "dgx-a100"], ["layers"]),
    ("bool-word", ["evaluate", "-m", "llama2-7b:gated_mlp=maybe", "-p", "dgx-a100"], ["gated_mlp"]),
    ("nodes-xN", ["evaluate", "-m", "llama2-7b", "-p", "dgx-h100x100000000"], ["nodes", "65,536"]),
    ("nodes-digits", ["evaluate", "-m", "llama2-7b", "-p", "dgx-h100x" + "9" * 5000], ["nodes", "65,536"]),
    ("nodes-zero", ["evaluate", "-m", "llama2-7b", "-p", "dgx-h100x0"], ["nodes", ">= 1"]),
    ("nodes-nan", ["evaluate", "-m", "llama2-7b", "-p", "dgx-h100:nodes=.nan"], ["nodes", "integer"]),
    ("layers-empty", ["evaluate", "-m", "llama2-7b:layers=", "-p", "dgx-a100"], ["layers", "integer"]),
    ("nodes-override", ["evaluate", "-m", "llama2-7b", "-p", "dgx-h100:nodes=100000"], ["nodes"]),
    ("per-node", ["evaluate", "-m", "llama2-7b", "-p", "dgx-h100:devices_per_node=1000000000"], ["devices_per_node"]),
    ("nodes-product", ["evaluate", "-m", "llama2-7b", "-p", "dgx-h100x60000:devices_per_node=8"], ["devices"]),
    ("mesh", ["evaluate", "-m", "llama2-7b", "-p", "mesh:rows=100000,cols=100000"], ["rows"]),
    ("mesh-product", ["evaluate", "-m", "llama2-7b", "-p", "mesh:rows=60000,cols=60000"], ["rows x cols"]),
    ("peak-nan", [*EVAL[:3], "-p", "dgx-h100:device.peak_tflops.bf16=.nan"], ["peak_tflops.bf16", "finite"]),
    ("peak-inf", [*EVAL[:3], "-p", "dgx-h100:device.peak_tflops.bf16=.inf"], ["peak_tflops.bf16", "finite"]),
    ("peak-zero", [*EVAL[:3], "-p", "dgx-h100:device.peak_tflops.bf16=0"], ["peak_tflops.bf16", "> 0"]),
    ("memory-nan", [*EVAL[:3], "-p", "dgx-h100:device.memory_gib=.nan"], ["memory_gib", "finite"]),
    ("bw-zero", [*EVAL[:3], "-p", "dgx-h100:device.memory_bw_gbs=0"], ["memory_bw_gbs"]),
    ("link-nan", [*EVAL[:3], "-p", "dgx-h100:links.intra.bandwidth_gbs=.nan"], ["links.intra.bandwidth_gbs"]),
    ("latency-inf", [*EVAL[:3], "-p", "dgx-h100:links.intra.latency_us=.inf"], ["latency_us"]),
    ("override-yaml", [*EVAL[:3], "-p", "dgx-h100:device.memory_gib=[1"], ["memory_gib"]),
    ("batch-huge", [*TUNE7, "--batch", "100000000000000000000"], ["--batch"]),
    ("batch-eval", [*EVAL, "--batch", "100000000000"], ["--batch", "65,536"]),
    ("seq-huge", [*EVAL, "--phase", "prefill", "--seq", "100000000000"], ["--seq"]),
    ("context-huge", [*EVAL, "--context", "100000000000"], ["--context"]),
    ("micro-batches", [*EVAL, "--batch", "8", "--micro-batches", "100000000000"], ["--micro-batches"]),
    ("micro-batches-sim", [*EVAL, "--batch", "65536", "--micro-batches", "65536", "--simulate"], ["4,096"]),
    ("replicas", [*EVAL, "--replicas", "100000000000"], ["--replicas"]),
    ("dp-layers", [*TUNE[:1], "-t", "dp", "-m", "llama2-7b:layers=2000", "-p", "dgx-h100x8"], ["dp", "layers^2"]),
    ("dp-devices", [*TUNE[:1], "-t", "dp", "-m", "llama2-7b", "-p", "dgx-h100x8192"], ["dp", "devices"]),
    ("tp-huge", [*EVAL, "--tp", "1000000000"], ["tp"]),
    ("tp-pp-huge", [*EVAL, "--tp", "10000", "--pp", "32"], ["--tp x --pp"]),
    ("memory-gib-0", [*TUNE7, "--memory-gib", "0"], ["--memory-gib", "memory_gib", "> 0"]),
    ("max-devices", [*TUNE7, "--max-devices", "100000"], ["--max-devices", "65,536"]),
    ("max-devices-over", [*TUNE7, "--max-devices", "9"], ["--max-devices", "8 devices"]),
    # counts of the RL commands: unbounded before (a day per 1e8 steps); the flag is named, not the library field
    ("timesteps", [*TRAIN, "--timesteps", "1000000000"], ["--timesteps", "100,000,000"]),
    ("finetune-steps", [*TRANSFER, "--finetune-steps", "1000000000"], ["--finetune-steps", "100,000,000"]),
    ("rollouts", [*TRANSFER, "--rollouts", "1000000000"], ["--rollouts", "10,000,000"]),
    # sizes named by the flag typed, not by the library's field ('workload: field batch', 'limits.max_devices')
    ("study-batch", ["study", "granularity", "-o", "out", *EVAL[1:], "--batch", "100000"], ["--batch", "65,536"]),
    ("graph-seq", ["graph", "build", "-m", "llama2-7b", "--seq", "100000000"], ["--seq", "16,777,216"]),
    ("transfer-context", [*TRANSFER, "--context", "100000000"], ["--context"]),
    ("pp-over-layers", [*EVAL, "--pp", "100"], ["--pp", "32 layers"]),  # "pp must be in 1..32" before
    ("split", [*EVAL, "--batch", "3", "--micro-batches", "2"], ["--micro-batches", "--batch"]),  # "micro_batches"
    ("tune-max-devices-9", [*TUNE7[:-1], "dgx-h100", "--max-devices", "9"], ["--max-devices is 9", "8 devices"]),
    ("recompute-decode", [*EVAL, "--recompute"], ["recompute", "training"]),
    ("gpipe-decode", [*EVAL, "--schedule", "gpipe"], ["gpipe", "training"]),
    ("gpipe-prefill", [*EVAL, "--phase", "prefill", "--schedule", "gpipe"], ["gpipe", "training"]),
    ("graph-layers", ["graph", "build", "-m", "llama2-7b:layers=100000000"], ["layers"]),
    ("models-show", ["models", "show", "llama2-7b:layers=100000000"], ["layers"]),
    ("platforms-show", ["platforms", "show", "dgx-h100x100000000"], ["nodes"]),
]


@pytest.mark.parametrize(("name", "mentions"), [(c[0], c[2]) for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_options_refused(runs: dict[str, tuple[Run, Path]], name: str, mentions: list[str]) -> None:
    assert_refused(runs[f"option:{name}"][0], mentions=mentions)


# -- files: scenarios, platforms, models, plans, campaigns ------------------------------------------------------
SCENARIO = "name: s\nmodel: llama2-7b\nplatform: dgx-a100\nphase: decode\nbatch: 8\ncontext: 1024\n"
PLATFORM = (Path(__file__).resolve().parent.parent / "configs" / "platforms" / "dgx-a100.yaml").read_text()
MODEL = "name: m\nlayers: 4\nhidden: 512\nheads: 8\nffn: 1024\nvocab: 1000\n"
STAGE = {"tp": 1, "devices": [0], "layers": [0, 31]}
PLAN = {"granularity": "layer", "micro_batches": 1, "replicas": 1, "stages": [STAGE]}
CAMPAIGN = "name: c\nscenarios:\n  - s.yaml\ntuners: [megatron]\nseeds: 1\noptimum: false\n"
POLICY = "[{name: rl, options: {policy: mine.zip}}]"


def _plan(**changes: object) -> str:
    return json.dumps({**PLAN, **changes})


def _stage(**changes: object) -> str:
    return json.dumps({**PLAN, "stages": [{**STAGE, **changes}]})


def _inline(**fields: str) -> str:
    lines = [f"    {k}: {v}" for k, v in {"model": "llama2-7b:layers=4", "platform": "dgx-a100", **fields}.items()]
    return "name: c\nscenarios:\n  - name: x\n" + "\n".join(lines) + "\ntuners: [megatron]\noptimum: false\n"


SCENARIO_TUNE = [*TUNE, "--scenario", "s.yaml"]
PLATFORM_EVAL = ["evaluate", "-m", "llama2-7b", "-p", "p.yaml"]
MODEL_EVAL = ["evaluate", "-m", "m.yaml", "-p", "dgx-a100"]
PLAN_EVAL = [*EVAL, "--plan", "plan.json"]
RUN = ["campaign", "run", "c.yaml"]


def sc(text: str) -> dict[str, str]:
    return {"s.yaml": text}


def pf(old: str, new: str) -> dict[str, str]:
    return {"p.yaml": PLATFORM.replace(old, new, 1)}


def md(text: str) -> dict[str, str]:
    return {"m.yaml": text}


def pl(text: str) -> dict[str, str]:
    return {"plan.json": text}


def cp(old: str, new: str) -> dict[str, str]:
    return {"s.yaml": SCENARIO, "c.yaml": CAMPAIGN.replace(old, new)}


def numbers(n: int) -> str:
    return str(list(range(1, n + 1)))


LIM = SCENARIO + "limits: "
FILE_CASES = [
    # scenarios
    ("sc-memory-nan", sc(LIM + "{memory_gib: .nan}"), SCENARIO_TUNE, ["limits.memory_gib", "finite"]),
    ("sc-memory-inf", sc(LIM + "{memory_gib: .inf}"), SCENARIO_TUNE, ["memory_gib", "finite"]),
    ("sc-memory-0", sc(LIM + "{memory_gib: 0}"), SCENARIO_TUNE, ["memory_gib", "> 0"]),
    ("sc-memory-neg", sc(LIM + "{memory_gib: -5}"), SCENARIO_TUNE, ["memory_gib"]),
    ("sc-tbt-nan", sc(LIM + "{tbt_ms: .nan}"), SCENARIO_TUNE, ["limits.tbt_ms", "finite"]),
    ("sc-ttft-0", sc(LIM + "{ttft_ms: 0}"), SCENARIO_TUNE, ["limits.ttft_ms"]),
    ("sc-max-dev-0", sc(LIM + "{max_devices: 0}"), SCENARIO_TUNE, ["limits.max_devices"]),
    ("sc-max-dev-over", sc(LIM + "{max_devices: 100000}"), SCENARIO_TUNE, ["max_devices"]),
    ("sc-max-dev-9", sc(LIM + "{max_devices: 9}"), SCENARIO_TUNE, ["max_devices", "8"]),
    ("sc-calibrated-str", sc(LIM + "{calibrated_only: 'no'}"), SCENARIO_TUNE, ["calibrated_only"]),
    ("sc-batch-huge", sc(SCENARIO.replace("batch: 8", "batch: 100000000000000000000")), SCENARIO_TUNE, ["batch"]),
    ("sc-batch-float", sc(SCENARIO.replace("batch: 8", "batch: 8.5")), SCENARIO_TUNE, ["batch", "integer"]),
    ("sc-batch-nan", sc(SCENARIO.replace("batch: 8", "batch: .nan")), SCENARIO_TUNE, ["batch"]),
    ("sc-context-huge", sc(SCENARIO.replace("1024", "99999999999")), SCENARIO_TUNE, ["context"]),
    ("sc-seq-huge", sc(SCENARIO + "seq: 99999999999\n"), SCENARIO_TUNE, ["seq"]),
    ("sc-model-layers", sc(SCENARIO.replace("7b", "7b:layers=100000000")), SCENARIO_TUNE, ["layers"]),
    ("sc-python-tag", sc("!!python/object/apply:os.system ['touch pwned']\n"), SCENARIO_TUNE, ["s.yaml"]),
    ("sc-deep", sc("a: " + "[" * 100_000 + "]" * 100_000 + "\n"), SCENARIO_TUNE, ["s.yaml"]),
    ("sc-too-big", sc(SCENARIO + "#" * (MAX_FILE_BYTES + 1) + "\n"), SCENARIO_TUNE, ["s.yaml", "bytes"]),
    ("sc-bad-yaml", sc("name: [unclosed\nmodel: x\n"), SCENARIO_TUNE, ["s.yaml", "line"]),
    # platform files
    ("pf-peak-nan", pf("bf16: 312", "bf16: .nan"), PLATFORM_EVAL, ["peak_tflops.bf16", "finite"]),
    ("pf-memory-inf", pf("memory_gib: 80", "memory_gib: .inf"), PLATFORM_EVAL, ["memory_gib"]),
    ("pf-memory-0", pf("memory_gib: 80", "memory_gib: 0"), PLATFORM_EVAL, ["memory_gib", "> 0"]),
    ("pf-bw-0", pf("memory_bw_gbs: 2039", "memory_bw_gbs: 0"), PLATFORM_EVAL, ["memory_bw"]),
    ("pf-nodes", pf("nodes: 1", "nodes: 1000000000"), PLATFORM_EVAL, ["nodes"]),
    ("pf-nodes-float", pf("nodes: 1", "nodes: 1.5"), PLATFORM_EVAL, ["nodes", "integer"]),
    ("pf-per-node-str", pf("per_node: 8", "per_node: '8'"), PLATFORM_EVAL, ["devices_per_node"]),
    ("pf-reserved-nan", pf("reserved_gib: 1.0", "reserved_gib: .nan"), PLATFORM_EVAL, ["reserved"]),
    ("pf-latency-nan", pf("latency_us: 0}", "latency_us: .nan}"), PLATFORM_EVAL, ["latency_us"]),
    ("pf-python-tag", {"p.yaml": "name: !!python/name:os.system\n"}, PLATFORM_EVAL, ["p.yaml"]),
    # model files
    ("md-layers-float", md(MODEL.replace("layers: 4", "layers: 4.5")), MODEL_EVAL, ["layers", "integer"]),
    ("md-layers-nan", md(MODEL.replace("layers: 4", "layers: .nan")), MODEL_EVAL, ["layers", "integer"]),
    ("md-layers-bool", md(MODEL.replace("layers: 4", "layers: true")), MODEL_EVAL, ["layers", "integer"]),
    ("md-layers-huge", md(MODEL.replace("layers: 4", "layers: 100000000")), MODEL_EVAL, ["layers"]),
    ("md-hidden-huge", md(MODEL.replace("hidden: 512", "hidden: 1073741824")), MODEL_EVAL, ["hidden"]),
    ("md-gated-int", md(MODEL + "gated_mlp: 1\n"), MODEL_EVAL, ["gated_mlp"]),
    ("md-dtype-list", md(MODEL + "dtype: [bf16]\n"), MODEL_EVAL, ["dtype"]),
    ("md-positions-neg", md(MODEL + "positions: -1\n"), MODEL_EVAL, ["positions"]),
    (
        "md-python-tag",
        md("!!python/object/apply:os.system ['touch pwned']\n"),
        ["models", "show", "m.yaml"],
        ["m.yaml"],
    ),
    ("md-malformed", md("layers: [4\n"), ["models", "show", "m.yaml"], ["m.yaml", "line"]),
    # plan files
    ("plan-recompute-str", pl(_stage(recompute="no")), PLAN_EVAL, ["recompute", "true or false"]),
    ("plan-recompute-int", pl(_stage(recompute=1)), PLAN_EVAL, ["recompute"]),
    ("plan-tp-float", pl(_stage(tp=1.0)), PLAN_EVAL, ["tp", "integer"]),
    ("plan-tp-bool", pl(_stage(tp=True)), PLAN_EVAL, ["tp", "integer"]),
    ("plan-tp-huge", pl(_stage(tp=10**12)), PLAN_EVAL, ["tp"]),
    ("plan-layers-bool", pl(_stage(layers=[False, 31])), PLAN_EVAL, ["layers"]),
    ("plan-devices-str", pl(_stage(devices=["0"])), PLAN_EVAL, ["devices"]),
    ("plan-micro-str", pl(_plan(micro_batches="4")), PLAN_EVAL, ["micro_batches"]),
    ("plan-micro-huge", pl(_plan(micro_batches=10**15)), PLAN_EVAL, ["micro_batches"]),
    ("plan-replicas-huge", pl(_plan(replicas=10**15)), PLAN_EVAL, ["replicas"]),
    ("plan-nan", pl(_plan().replace('"micro_batches": 1', '"micro_batches": NaN')), PLAN_EVAL, ["plan.json", "finite"]),
    ("plan-infinity", pl(_stage().replace('"tp": 1', '"tp": Infinity')), PLAN_EVAL, ["plan.json"]),
    ("plan-deep", pl("[" * 100_000 + "]" * 100_000), PLAN_EVAL, ["plan.json", "nested"]),
    ("plan-deep-field", pl(_plan(meta=json.loads("[" * 200 + "]" * 200))), PLAN_EVAL, ["plan.json", "nested"]),
    ("plan-device-neg", pl(_stage(devices=[-1])), PLAN_EVAL, ["device ids must be >= 0"]),
    ("plan-device-dup", pl(_stage(tp=2, devices=[0, 0])), PLAN_EVAL, ["device 0 is listed twice"]),
    (
        "plan-many-stages",
        pl(json.dumps({"stages": [{**STAGE, "devices": [i]} for i in range(70_000)]})),
        PLAN_EVAL,
        ["stages"],
    ),
    ("plan-binary", pl("\udcff"), PLAN_EVAL, ["plan.json"]),
    # campaign specs
    ("cp-seeds", cp("seeds: 1", "seeds: 1000000000"), RUN, ["seeds", "10,000"]),
    ("cp-seed-list", cp("seeds: 1", f"seeds: {numbers(20000)}"), RUN, ["seeds"]),
    ("cp-seed-value", cp("seeds: 1", "seeds: [99999999999]"), RUN, ["seed"]),
    ("cp-product", {"c.yaml": _inline(batch=numbers(1000), seq=numbers(1000))}, RUN, ["scenarios", "1,000,000"]),
    (
        "cp-product-limits",
        {"c.yaml": _inline(limits=f"{{memory_gib: {numbers(200)}, tbt_ms: {numbers(200)}}}")},
        RUN,
        ["scenarios"],
    ),
    ("cp-jobs", {"c.yaml": _inline(batch=numbers(50)) + "seeds: 9000\n"}, RUN, ["jobs", "100,000"]),
    ("cp-memory-nan", {"c.yaml": _inline(limits="{memory_gib: .nan}")}, RUN, ["memory_gib", "finite"]),
    ("cp-batch-huge", {"c.yaml": _inline(batch="100000000000000")}, RUN, ["batch"]),
    ("cp-layers", {"c.yaml": _inline(model="llama2-7b:layers=100000000")}, RUN, ["layers"]),
    ("cp-max-devices", {"c.yaml": _inline(limits="{max_devices: 64}")}, RUN, ["max_devices"]),
    ("cp-bogus-option", cp("[megatron]", "[{name: optuna-tpe, options: {bogus: 1}}]"), RUN, ["bogus"]),
    ("cp-policy-missing", cp("[megatron]", "[{name: rl, options: {policy: nope.zip}}]"), RUN, ["policy", "nope.zip"]),
    ("cp-budget-huge", cp("[megatron]", "[{name: optuna-tpe, budget: 100000000000}]"), RUN, ["budget"]),
    ("cp-dp-micro", cp("[megatron]", "[{name: dp, options: {max_micro_batches: 100000}}]"), RUN, ["4096"]),
    ("cp-dp-replicas", cp("[megatron]", "[{name: dp, options: {replicas: 100000}}]"), RUN, ["replicas", "65536"]),
    ("cp-storage", cp("[megatron]", "[{name: optuna-tpe, options: {storage: 'notaurl://x'}}]"), RUN, ["storage"]),
    ("cp-stages", cp("[megatron]", "[{name: optuna-tpe, options: {max_stages: 100000}}]"), RUN, ["max_stages"]),
    (  # a policy path is read from the spec's folder (sub/), not from the current folder, where mine.zip lies
        "cp-policy-cwd",
        {"sub/s.yaml": SCENARIO, "sub/c.yaml": CAMPAIGN.replace("[megatron]", POLICY), "mine.zip": ""},
        ["campaign", "run", "sub/c.yaml"],
        ["sub/c.yaml", "policy", "sub/mine.zip"],
    ),
]


@pytest.mark.parametrize(("name", "mentions"), [(c[0], c[3]) for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_files_refused(runs: dict[str, tuple[Run, Path]], name: str, mentions: list[str]) -> None:
    run, folder = runs[f"file:{name}"]
    assert_refused(run, mentions=mentions)
    assert not (folder / "pwned").exists()


#: An infeasible prediction (over memory): its --json output must still be strict JSON.
STRICT_JSON = ["evaluate", "-m", "llama2-70b", "-p", "dgx-a100", "--json"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, Path]]:
    """Every case of the tables (and :data:`STRICT_JSON`) run once, in one child process, each in its own folder."""
    cases: dict[str, tuple[list[str], Path]] = {}
    for name, argv, _ in OPTION_CASES:
        cases[f"option:{name}"] = (argv, tmp_path_factory.mktemp("option"))
    for name, files, argv, _ in FILE_CASES:
        folder = tmp_path_factory.mktemp("file")
        for file, text in files.items():
            (folder / file).parent.mkdir(exist_ok=True)
            (folder / file).write_text(text, errors="surrogateescape")
        cases[f"file:{name}"] = (argv, folder)
    cases["strict-json"] = (STRICT_JSON, tmp_path_factory.mktemp("json"))
    done = run_batch(list(cases.values()))
    return {key: (run, folder) for (key, (_, folder)), run in zip(cases.items(), done, strict=True)}


# -- the library: the same bounds without the command line ----------------------------------------------------
def test_divisors_of_huge_numbers_come_from_factors() -> None:
    """Trial division by the primes up to 4,096 covers every bounded size (<= 2^24), primes and prime squares too."""
    assert divisors(2**24) == [2**e for e in range(25)]
    assert len(divisors(2**12 * 3**7)) == 13 * 8 and divisors(2**12 * 3**7)[-1] == 2**12 * 3**7
    assert prime_factors(16_777_213) == {16_777_213: 1}  # the largest prime below 2^24
    assert prime_factors(4093 * 4093) == {4093: 2}  # a prime square: the last trial divisor counts
    assert prime_factors(4099 * 4091) == {4091: 1, 4099: 1}  # a factor above sqrt(2^24) is left over
    assert prime_factors(1) == {}
    assert all(divisors(n) == [d for d in range(1, n + 1) if n % d == 0] for n in range(1, 400))


@pytest.mark.parametrize("n", [0, -4, 2.0, True, 2**24 + 1, 10**20])
def test_divisors_refuse_non_counts(n: object) -> None:
    with pytest.raises(ValueError, match="n must"):
        divisors(n)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"memory_gib": math.nan}, "limits.memory_gib"),
        ({"memory_gib": math.inf}, "limits.memory_gib"),
        ({"memory_gib": 0}, "limits.memory_gib"),
        ({"tbt_ms": -1.0}, "limits.tbt_ms"),
        ({"ttft_ms": math.nan}, "limits.ttft_ms"),
        ({"max_devices": 0}, "limits.max_devices"),
        ({"max_devices": 2.0}, "limits.max_devices"),
        ({"max_devices": MAX_DEVICES + 1}, "limits.max_devices"),
        ({"calibrated_only": "no"}, "limits.calibrated_only"),
    ],
)
def test_limits_refuse_bad_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_problem_bounds_and_platform_cap() -> None:
    with pytest.raises(ValueError, match="batch"):
        Problem("llama2-7b", "dgx-a100", batch=MAX_BATCH + 1)
    with pytest.raises(ValueError, match="context"):
        Problem("llama2-7b", "dgx-a100", context=-1)
    problem = Problem("llama2-7b", "dgx-a100", limits=Limits(max_devices=16))
    with pytest.raises(ValueError, match=r"limits\.max_devices.*has 8 devices"):
        problem.resolved_platform  # noqa: B018
    assert Problem("llama2-7b", "dgx-a100", limits=Limits(max_devices=8)).max_devices == 8


def test_model_and_platform_bounds() -> None:
    assert get_model(f"llama2-7b:layers={MAX_LAYERS}").layers == MAX_LAYERS
    with pytest.raises(ValueError, match="layers"):
        get_model(f"llama2-7b:layers={MAX_LAYERS + 1}")
    assert get_platform("dgx-h100x8192").num_devices == MAX_DEVICES
    with pytest.raises(ValueError, match="65,536"):
        get_platform("dgx-h100x8193")


def test_plan_recompute_is_checked_by_phase() -> None:
    train = Problem("llama2-7b:layers=4", "dgx-a100", phase="train", batch=8)
    decode = Problem("llama2-7b:layers=4", "dgx-a100", phase="decode", batch=8)
    plan = Plan.uniform(4, recompute=True)
    assert train.evaluate(plan).feasible
    assert any("training only" in p for p in plan.problems(decode.graph(), decode.resolved_platform))
    assert not Plan.uniform(4).problems(decode.graph(), decode.resolved_platform)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "[" * 100 + "]" * 100])
def test_strict_json(text: str) -> None:
    with pytest.raises(ValueError, match=r"x\.json"):
        parse_json(text, "x.json")


def test_json_output_is_strict_for_an_infeasible_plan(runs: dict[str, tuple[Run, Path]]) -> None:
    """An infeasible prediction (over memory) still prints JSON any strict parser reads: no NaN, no Infinity."""
    run = runs["strict-json"][0]
    assert run.returncode == 0, run.describe()
    data = parse_json(run.stdout, "evaluate --json")
    assert data["feasible"] is False


def test_plan_save_creates_no_folders_and_leaves_no_tmp(tmp_path: Path) -> None:
    """``Plan.save`` from Python made the missing folders of a mistyped path; now it names the missing folder."""
    plan = Plan.uniform(4)
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError, match=f"folder {missing} does not exist"):
        plan.save(missing / "plan.json")
    assert not (tmp_path / "no").exists()
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        plan.save(tmp_path / "adir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"] and not any((tmp_path / "adir").iterdir())
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan and not (tmp_path / "plan.json.tmp").exists()


def test_a_campaign_policy_path_starts_at_the_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``policy: pol/mine.zip`` is read next to the spec, whatever the current folder; absolute paths stay."""
    from paratune.campaign import CampaignSpec

    specs = tmp_path / "specs"
    (specs / "pol").mkdir(parents=True)
    (specs / "pol" / "mine.zip").write_bytes(b"")  # loading the spec checks the file exists, not what it holds
    (specs / "s.yaml").write_text(SCENARIO)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def load(policy: str) -> CampaignSpec:
        (specs / "c.yaml").write_text(CAMPAIGN.replace("[megatron]", POLICY.replace("mine.zip", policy)))
        return CampaignSpec.load(Path("../specs/c.yaml"))

    stored = load("pol/mine.zip").tuners[0].options["policy"]
    assert stored == str(specs / "pol" / "mine.zip")
    assert load(stored).tuners[0].options["policy"] == stored  # absolute: kept
    (elsewhere / "pol").mkdir()
    (elsewhere / "pol" / "other.zip").write_bytes(b"")
    with pytest.raises(ValueError, match=r"tuners\[0\].*other\.zip"):
        load("pol/other.zip")  # next to the current folder only: resolved against cwd before


def test_optuna_spaces_offer_no_more_micro_batches_than_a_plan_may_have() -> None:
    """A batch of 65,536 made 65,536 micro-batches a choice; plans above MAX_MICRO_BATCHES are refused."""
    from paratune._limits import MAX_MICRO_BATCHES
    from paratune.search._optuna_spaces import make_space

    problem = Problem("llama2-7b:layers=2", "dgx-a100", phase="prefill", batch=MAX_BATCH, seq=16)
    for name in ("uniform", "hybrid"):
        space = make_space(name, problem)
        assert max(space.micro_choices) == MAX_MICRO_BATCHES, name
        assert max(space.replica_choices) == 8, name


def test_heuristics_pick_no_more_micro_batches_than_a_plan_may_have() -> None:
    """Training heuristics take 4 x PP micro-batches: with 2,048 stages that was 8,192, a plan no reader accepts."""
    from paratune._limits import MAX_MICRO_BATCHES
    from paratune.search._heuristics import _micro_batches, _Shape

    shape = _Shape(n_layers=4096, tps=[1], per_node=8, nodes=512, devices=4096, batch=MAX_BATCH, train=True)
    assert _micro_batches(shape, pp=2048, replicas=1) == MAX_MICRO_BATCHES
    assert _micro_batches(shape, pp=4, replicas=2) == 16


def test_rl_counts_are_bounded_in_the_library() -> None:
    """``transfer`` refuses before it loads a policy or runs a step (the CLI names the flags)."""
    from paratune._limits import MAX_BUDGET, MAX_TIMESTEPS
    from paratune.agents import transfer

    problem = Problem("llama2-7b:layers=2", "dgx-a100")
    with pytest.raises(ValueError, match="rollouts is 10,000,001"):
        transfer(problem, rollouts=MAX_BUDGET + 1, policy="missing.zip")
    with pytest.raises(ValueError, match="finetune_steps is 100,000,001"):
        transfer(problem, finetune_steps=MAX_TIMESTEPS + 1, policy="missing.zip")


def test_train_checks_its_options_before_it_makes_the_output_folder(tmp_path: Path) -> None:
    """``train`` made OUT, then refused ``vec_env``, ``granularity``, ``random_setup`` or ``imitate``."""
    pytest.importorskip("torch")
    from paratune.agents import train

    pool = [Problem("llama2-7b:layers=2", "dgx-a100")]
    out = tmp_path / "out"
    placement = "paratune/Placement-v0"
    for kwargs, word in [
        ({"vec_env": "nope"}, "vec_env"),
        ({"granularity": "nope"}, "granularity"),
        ({"env_id": placement, "random_setup": 0.5}, "random_setup"),
        ({"env_id": placement, "imitate": True}, "imitate"),
        ({"timesteps": 10**9}, "timesteps is 1,000,000,000"),
    ]:
        with pytest.raises(ValueError, match=word):
            train(pool, out=out, **kwargs)  # type: ignore[arg-type]
        assert not out.exists(), kwargs


def test_the_placement_space_is_bounded() -> None:
    """65,536 devices made each task a choice among 65,536 groups (0.75 s and megabytes per trial on 25 tasks)."""
    from paratune._limits import MAX_PLACEMENT_CHOICES
    from paratune.search import make_tuner
    from paratune.search._optuna_spaces import MAX_PLACEMENT_GROUPS, make_space

    wide = Problem("llama2-7b:layers=2", "dgx-h100x8192", phase="prefill", seq=16, granularity="op")
    assert make_space("placement", wide).max_groups == MAX_PLACEMENT_GROUPS
    result = make_tuner("optuna-random", space="placement", warm_start=False).tune(wide, budget=2, seed=0)
    assert result.evaluations == 2
    many = Problem("llama2-7b:layers=400", "dgx-h100x32", phase="prefill", seq=16, granularity="op")
    tasks = len(many.graph("op").tasks)
    assert tasks * MAX_PLACEMENT_GROUPS > MAX_PLACEMENT_CHOICES
    with pytest.raises(ValueError, match=rf"placement.*{tasks:,} tasks x 256 device groups"):
        make_space("placement", many)
