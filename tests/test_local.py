"""``cpu-local`` is this machine: measured here (``paratune calibrate local``, cached outside the repository),
or plainly uncalibrated (``calibrated: false`` and the reason in ``evaluate --json``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from paratune.cli import app
from paratune.costmodel import _machine, get_platform, load_profile
from paratune.costmodel._machine import Machine, cache_dir, foreign_reason, local_platform_path, local_profile_path
from paratune.costmodel.calibration import platform_for, read_measurements, write_profile
from paratune.costmodel.calibration._write import write_yaml

runner = CliRunner()
MODEL = "llama2-7b:layers=4,hidden=768,heads=12,kv_heads=12,ffn=2048,vocab=8000"
HERE = Machine("Test CPU 9000", 2, ("avx2", "fma"))


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Machine:
    """This machine is :data:`HERE`, and its cache an empty folder."""
    monkeypatch.setattr(_machine, "this_machine", lambda: HERE)
    monkeypatch.setenv(_machine.CACHE_ENV, str(tmp_path / "cache"))
    return HERE


def _measured_on(machine: dict[str, object]) -> dict[str, object]:
    return {"measured": {"machine": machine, "dtype": "bf16"}}


def test_a_cpu_profile_is_this_machines_only_when_model_cores_and_extensions_match(here: Machine) -> None:
    same = {"cpu": here.cpu, "cores": here.cores, "isa": list(here.isa)}
    assert foreign_reason("p", _measured_on(same)) is None
    for other in ({**same, "cores": 16}, {**same, "cpu": "AMD EPYC"}, {**same, "isa": ["avx2"]}):
        reason = foreign_reason("p", _measured_on(other))
        assert reason and reason.startswith("uncalibrated on this CPU") and "paratune calibrate local" in reason
    unrecorded = foreign_reason("p", _measured_on({"cpu": here.cpu, "cores": here.cores}))
    assert unrecorded and "vector extensions not recorded" in unrecorded
    assert foreign_reason("p", _measured_on({"cpu": "x", "cores": 1, "gpu": "NVIDIA H100"})) is None  # a GPU's
    assert foreign_reason("a100-vidur", load_profile("a100-vidur").fit) is None  # not measured on a CPU


def test_evaluate_json_says_cpu_local_is_uncalibrated_on_another_cpu(here: Machine) -> None:
    args = ["evaluate", "--model", MODEL, "--platform", "cpu-local", "--phase", "decode", "--seq", "128", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["calibrated"] is False and data["expected_error_pct"] is None
    assert data["calibration_reason"].startswith("uncalibrated on this CPU: profile cpu-local was measured on")
    assert here.cpu in data["calibration_reason"]
    table = runner.invoke(app, args[:-1])
    assert table.exit_code == 0 and "uncalibrated on this CPU" in table.stdout
    gpu = runner.invoke(app, ["evaluate", "--model", "llama2-7b", "--platform", "dgx-a100", "--json"])
    assert json.loads(gpu.stdout)["calibration_reason"] is None  # calibrated: nothing to explain


def test_cached_platform_and_profile_of_this_machine_replace_the_shipped_ones(here: Machine) -> None:
    shipped = get_platform("cpu-local")
    assert str(cache_dir()).endswith("cache") and not local_profile_path("cpu-local").exists()
    mine = dataclasses.replace(
        load_profile("cpu-local", local=False),
        source="measured here",
        fit={"measured": {"machine": {"cpu": here.cpu, "cores": here.cores, "isa": list(here.isa)}}},
    )
    write_profile(mine, local_profile_path("cpu-local"))
    platform_yaml = yaml.safe_load((Path(__file__).parents[1] / "configs" / "platforms" / "cpu-local.yaml").read_text())
    platform_yaml["device"] = {**platform_yaml["device"], "peak_tflops": {"fp32": 0.1, "bf16": 0.4, "fp16": 0.4}}
    write_yaml(platform_yaml, local_platform_path("cpu-local"))
    plat = get_platform("cpu-local")
    assert plat.profile.source == "measured here" and foreign_reason(plat.profile.name, plat.profile.fit) is None
    assert plat.device.peak_flops["bf16"] == pytest.approx(0.4e12, rel=1e-9)
    assert load_profile("cpu-local", local=False).source == shipped.profile.source  # the shipped one, on request
    # Measurements of another CPU (the committed ones) are still fitted on the shipped preset's peaks.
    committed = read_measurements(Path(__file__).parents[1] / "configs" / "measurements" / "cpu-local", "cpu")
    assert platform_for("cpu", committed).device.peak_flops == shipped.device.peak_flops
    # Another CPU has another key: it does not see this machine's cache.
    other = Machine("Other CPU", 64, ("avx2",))
    assert local_profile_path("cpu-local", other) != local_profile_path("cpu-local")
    assert other.key() != here.key() and "/" not in here.key()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(_machine.CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(_machine.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "paratune"


@pytest.mark.slow
@pytest.mark.needs("torch")
def test_calibrate_local_measures_this_cpu_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The quick grid (seconds): platform and profile land in the cache, and cpu-local prices with them."""
    monkeypatch.setenv(_machine.CACHE_ENV, str(tmp_path))
    result = runner.invoke(app, ["calibrate", "local", "--quick"])
    assert result.exit_code == 0, result.output
    assert "[measure]" in result.stderr and "cpu-local fitted" in result.stdout
    plat = get_platform("cpu-local")
    assert "paratune calibrate local --quick" in plat.profile.source
    assert foreign_reason(plat.profile.name, plat.profile.fit) is None
    assert any("calibrate local" in s for s in plat.sources) and plat.device.peak_flops["bf16"] > 0
    again = runner.invoke(app, ["calibrate", "local"])
    assert again.exit_code == 0 and "already measured" in again.stderr
