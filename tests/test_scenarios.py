"""The benchmark scenario suite: every file loads, it covers every model family, platform, phase and objective,
and bad files say where."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from paratune.problem import default_scenarios_dir, load_scenario, load_scenarios
from paratune.search import Problem, tune

MODELS = {"gpt2-xl", "llama2-7b", "llama2-70b", "llama3-8b", "llama3-70b", "llama3-405b", "mixtral-8x7b", "gpt3-175b"}


@pytest.fixture(scope="module")
def suite() -> list[Problem]:
    return load_scenarios()


def test_every_scenario_loads_with_its_file_name(suite: list[Problem]) -> None:
    files = sorted(default_scenarios_dir().glob("*.yaml"))
    assert len(suite) == len(files) >= 24
    assert [p.name for p in suite] == [f.stem for f in files]
    for f in files:
        data = yaml.safe_load(f.read_text())
        assert len(data.get("description", "")) > 40, f"{f.name}: describe the workload shape"


def test_suite_covers_models_platforms_phases_objectives(suite: list[Problem]) -> None:
    assert {p.model for p in suite} >= MODELS
    assert {p.phase for p in suite} == {"prefill", "decode", "train"}
    objectives = {p.objective for p in suite}
    assert objectives >= {"ttft", "tbt", "throughput", "step"}
    assert any(o.endswith("+memory") for o in objectives)
    kinds = {(p.resolved_platform.device.name.split("-")[0], p.resolved_platform.nodes > 1) for p in suite}
    for device in ("A100", "H100", "H200"):
        assert (device, False) in kinds and (device, True) in kinds, device
    assert any(p.resolved_platform.topology == "mesh" for p in suite)
    assert max(p.resolved_platform.nodes for p in suite) == 8
    tight = [p for p in suite if p.limits.memory_gib is not None]
    assert len(tight) >= 3 and all(p.memory_limit_bytes < p.resolved_platform.device.usable_memory for p in tight)
    assert any(p.limits.tbt_ms for p in suite) and any(p.limits.max_devices for p in suite)


def test_every_scenario_has_a_feasible_heuristic_plan(suite: list[Problem]) -> None:
    for p in suite:
        found = [name for name in ("megatron", "min-tp-replicas", "serving-default") if tune(p, name).found]
        if not found and tune(p, "balanced-pp").found:
            found = ["balanced-pp"]
        assert found, f"{p.name}: no heuristic finds a feasible plan"


def test_pattern_selects_by_name() -> None:
    chosen = load_scenarios(pattern="llama3-405b*", check=False)
    assert chosen and all(p.name.startswith("llama3-405b") for p in chosen)
    assert load_scenarios(pattern="no-such-*", check=False) == []


def _write(path: Path, **fields: object) -> Path:
    base = {"model": "llama2-7b:layers=2", "platform": "dgx-a100", "phase": "decode", "batch": 4}
    base.update(fields)
    path.write_text(yaml.safe_dump({k: v for k, v in base.items() if v is not None}))
    return path


def test_bad_scenario_files_name_file_and_field(tmp_path: Path) -> None:
    cases = [
        (dict(model=None), r"bad\.yaml: field 'model' is missing"),
        (dict(batch=0), r"bad\.yaml: field 'batch' must be >= 1"),
        (dict(phase="serve"), r"bad\.yaml: field 'phase' is 'serve'; allowed: prefill, decode, train"),
        (dict(limits={"memory_gb": 10}), r"bad\.yaml: unknown field\(s\) in 'limits': memory_gb"),
        (dict(limits={"tbt_ms": "fast"}), r"bad\.yaml: field 'limits\.tbt_ms' must be a number"),
        (dict(objective="ttft"), r"bad\.yaml: objective 'ttft' does not apply to phase 'decode'"),
        (dict(model="llama9-1t"), r"bad\.yaml: field 'model': .*llama9-1t"),
        (dict(platform="dgx-z100"), r"bad\.yaml: field 'platform': unknown platform 'dgx-z100'"),
        (dict(nodes=2), r"bad\.yaml: unknown field\(s\): nodes"),
    ]
    for fields, message in cases:
        path = _write(tmp_path / "bad.yaml", **fields)
        with pytest.raises(ValueError, match=message):
            load_scenario(path)


def test_directory_errors_and_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such scenario file or directory"):
        load_scenarios(tmp_path / "missing")
    with pytest.raises(ValueError, match="no scenario files"):
        load_scenarios(tmp_path)
    _write(tmp_path / "a.yaml")
    _write(tmp_path / "b.yaml", name="a")
    with pytest.raises(ValueError, match=r"b\.yaml: field 'name': 'a' is already the name of .*a\.yaml"):
        load_scenarios(tmp_path)
    _write(tmp_path / "b.yaml", name="custom")
    assert [p.name for p in load_scenarios(tmp_path)] == ["a", "custom"]
    assert load_scenario(tmp_path / "a.yaml").to_dict()["name"] == "a"
