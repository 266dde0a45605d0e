"""Platforms: presets carry the datasheet numbers; user files are validated by field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from paratune.costmodel import Plan, get_platform, platforms_dir, preset_names
from paratune.costmodel._trust import calibration_reason

GIB = 1024**3


def test_presets_match_datasheets() -> None:
    a100, h100, h200 = get_platform("dgx-a100"), get_platform("dgx-h100"), get_platform("hgx-h200")
    assert a100.device.peak("bf16") == 312e12 and a100.device.memory_bw == 2039e9
    assert a100.links["intra"].bandwidth == 300e9 and a100.links["inter"].bandwidth == 25e9
    assert h100.device.peak("bf16") == 989e12 and h100.device.peak("fp8") == 1979e12
    assert h100.device.memory_bw == 3350e9 and h100.device.memory_bytes == 80 * GIB
    assert h100.links["intra"].bandwidth == 450e9 and h100.links["inter"].bandwidth == 50e9
    assert h200.device.peak("bf16") == h100.device.peak("bf16")
    assert h200.device.memory_bw == 4800e9 and h200.device.memory_bytes == pytest.approx(141e9, rel=0.001)
    assert a100.device.peak("fp8") == 312e12  # no fp8 tensor cores: runs at the bf16 rate


@pytest.mark.parametrize("nodes", [2, 4, 8])
def test_multi_node_variants(nodes: int) -> None:
    p = get_platform(f"dgx-h100x{nodes}")
    assert p.num_devices == 8 * nodes
    assert p.link_class([0, 7]) == "intra" and p.link_class([7, 8]) == "inter"


def test_mesh_and_cpu() -> None:
    mesh = get_platform("mesh:rows=2,cols=3")
    assert mesh.num_devices == 6 and mesh.link_class([0, 1]) == "mesh"
    assert mesh.hops([0, 1]) == 1 and mesh.hops([0, 5]) == 3
    assert get_platform("cpu-local").num_devices == 2
    assert set(preset_names()) >= {"dgx-a100", "dgx-h100", "hgx-h200", "mesh", "cpu-local"}


def _user_file(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((platforms_dir() / "dgx-h100.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_file_loads(tmp_path: Path) -> None:
    p = get_platform(str(_user_file(tmp_path, nodes=3)))
    assert p.num_devices == 24


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device__memory_gib": -1}, r"mine.yaml: field 'device.memory_gib' must be > 0"),
        ({"device__memory_gib": "lots"}, r"field 'device.memory_gib' must be a number"),
        ({"topology": "torus"}, r"field 'topology' is 'torus'; allowed: switch, mesh"),
        ({"device__peak_tflops": {"int4": 3}}, r"field 'device.peak_tflops.int4' is not a dtype"),
        ({"nodes": 2, "links": {"intra": {"bandwidth_gbs": 450}}}, r"field 'links.inter' is missing"),
        ({"colour": "green"}, r"unknown field\(s\): colour"),
        ({"profile": "nope"}, r"field 'profile' unknown calibration profile 'nope'"),
    ],
)
def test_user_file_errors_name_file_and_field(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_platform(str(_user_file(tmp_path, **changes)))


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ValueError, match="presets: cpu-local, dgx-a100"):
        get_platform("dgx-z900")


#: The presets taken from aiconfigurator's system specs: devices, dense bf16 / fp8 / fp4 TFLOP/s (None: no fp4),
#: memory GiB, memory GB/s, intra-node and inter-node GB/s per GPU and direction.
NEW_PRESETS = {
    "dgx-b200": (8, 2250, 4500, 9000, 180.0, 7700, 900, 100),
    "hgx-b300": (8, 2250, 4500, 14000, 268.6, 7750, 900, 100),
    "gb200-nvl72": (72, 2500, 5000, 10000, 185.0, 8000, 900, 100),
    "l40s-pcie": (8, 362.05, 733, None, 44.99, 864, 32, 50),
    "rtx-pro-6000": (8, 467.8, 935.6, 1871.2, 95.59, 1792, 64, 50),
}


@pytest.mark.parametrize("name", sorted(NEW_PRESETS))
def test_new_presets_match_the_system_specs(name: str) -> None:
    devices, bf16, fp8, fp4, mem, bw, intra, inter = NEW_PRESETS[name]
    p = get_platform(name)
    assert p.num_devices == devices and p.devices_per_node == devices and p.topology == "switch"
    assert p.device.peak("bf16") == pytest.approx(bf16 * 1e12, rel=1e-9)
    assert p.device.peak("fp8") == pytest.approx(fp8 * 1e12, rel=1e-9)
    assert p.device.peak_flops.get("fp4") == (None if fp4 is None else pytest.approx(fp4 * 1e12, rel=1e-9))
    assert p.device.memory_bytes == pytest.approx(mem * GIB, rel=1e-9)
    assert p.device.memory_bw == pytest.approx(bw * 1e9, rel=1e-9)
    assert p.links["intra"].bandwidth == pytest.approx(intra * 1e9, rel=1e-9)
    assert p.links["inter"].bandwidth == pytest.approx(inter * 1e9, rel=1e-9)
    assert any("aiconfigurator" in s for s in p.sources) and p.describe()["sources"] == list(p.sources)
    assert name in preset_names()


def test_gb200_nvl72_is_one_72_gpu_nvlink_domain_and_racks_join_over_infiniband() -> None:
    rack = get_platform("gb200-nvl72")
    assert rack.link_class(list(range(72))) == "intra" and rack.link_class([0, 71]) == "intra"
    two = get_platform("gb200-nvl72x2")
    assert two.num_devices == 144 and two.link_class([71, 72]) == "inter" and two.link_class([72, 143]) == "intra"
    alpha_intra, bw_intra = two.link_terms("intra")
    alpha_inter, bw_inter = two.link_terms("inter")
    assert bw_inter < bw_intra / 5 and alpha_inter > alpha_intra


@pytest.mark.parametrize("name", sorted(NEW_PRESETS))
def test_new_presets_are_priced_by_their_fitted_profiles(name: str) -> None:
    from paratune.search import Problem

    p = Problem("llama2-7b:layers=2", name, phase="decode", batch=8, context=512)
    assert p.resolved_platform.profile.name.endswith("-aic") and p.resolved_platform.uncalibrated == ""
    m = p.evaluate(Plan.uniform(2, tp=2))
    assert m.feasible and m.expected_error_pct is not None


def test_placeholder_profile_is_never_called_calibrated(tmp_path: Path) -> None:
    from paratune.search import Problem

    reason = "profile h100-vidur was fitted on H100; it stands in for a new GPU"
    path = _user_file(tmp_path, profile="h100-vidur", placeholder={"profile": "h100-vidur", "reason": reason})
    p = Problem("llama2-7b:layers=2", str(path), phase="decode", batch=8, context=512)
    m = p.evaluate(Plan.uniform(2, tp=2))
    assert m.feasible and not m.calibrated and m.expected_error_pct is None
    why = calibration_reason(m, p.resolved_platform)
    assert why is not None and why.startswith("uncalibrated on ") and "stands in" in why
    # The note excuses only the borrowed profile: another profile named by an override drops it.
    assert get_platform(f"{path}:profile=h100-default").uncalibrated == ""


@pytest.mark.parametrize(
    ("placeholder", "message"),
    [
        ({"profile": "h100-vidur", "reason": " "}, r"field 'placeholder.reason' must say why"),
        ({"profile": "h100-vidur"}, r"field 'placeholder.reason' is missing"),
        ({"profile": "h100-vidur", "reason": "x", "until": "soon"}, r"unknown field\(s\) in 'placeholder': until"),
        ("borrowed", r"placeholder must be a mapping"),
    ],
)
def test_placeholder_errors_name_the_field(tmp_path: Path, placeholder: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_platform(str(_user_file(tmp_path, placeholder=placeholder)))


def test_fp4_peak_is_accepted_and_other_dtypes_fall_back_to_bf16(tmp_path: Path) -> None:
    p = get_platform(str(_user_file(tmp_path, device__peak_tflops={"bf16": 100, "fp4": 400})))
    assert p.device.peak("fp4") == 400e12 and p.device.peak("fp8") == 100e12


def test_cli_lists_the_new_presets_and_evaluates_on_them() -> None:
    import json

    from typer.testing import CliRunner

    from paratune.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["platforms", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(NEW_PRESETS) <= set(rows) and rows["gb200-nvl72"]["devices"] == 72
    assert rows["dgx-b200"]["uncalibrated"] is None and rows["dgx-h100"]["uncalibrated"] is None
    args = ["evaluate", "-m", "llama2-70b:layers=2", "-p", "gb200-nvl72", "--phase", "decode", "--tp", "64"]
    out = runner.invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["expected_error_pct"] is not None and data["devices_used"] == 64
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "gb200-aic" in table.stdout and "hand-set" not in table.stdout


#: Preset -> AIConfigurator system whose spec its numbers come from.
AIC_SYSTEMS = {
    "dgx-h100": "h100_sxm",
    "hgx-h200": "h200_sxm",
    "dgx-b200": "b200_sxm",
    "hgx-b300": "b300_sxm",
    "gb200-nvl72": "gb200",
    "l40s-pcie": "l40s",
    "rtx-pro-6000": "rtx_pro_6000_server",
}


@pytest.mark.needs("aiconfigurator_core", "pyarrow")
@pytest.mark.parametrize("name", sorted(AIC_SYSTEMS))
def test_presets_agree_with_aiconfigurator_system_specs(name: str) -> None:
    from paratune.costmodel.calibration._aiconfigurator import system_spec

    spec = system_spec(AIC_SYSTEMS[name])
    gpu, node = spec["gpu"], spec["node"]
    p = get_platform(name)
    close = {"rel": 2e-3}  # H100's fp8: 1,979 (datasheet) against the spec's 1,978; memory rounded to 0.01 GiB
    assert p.device.peak("bf16") == pytest.approx(gpu["bfloat16_tc_flops"], **close)
    assert p.device.peak("fp8") == pytest.approx(gpu["fp8_tc_flops"], **close)
    assert p.device.peak_flops.get("fp4") == (
        pytest.approx(gpu["fp4_tc_flops"], **close) if "fp4_tc_flops" in gpu else None
    )
    assert p.device.memory_bw == pytest.approx(gpu["mem_bw"], **close)
    assert p.links["intra"].bandwidth == pytest.approx(node["intra_node_bw"], **close)
    between = node.get("inter_rack_bw", node["inter_node_bw"])  # GB200: "inter_node" is NVLink between trays
    assert p.links["inter"].bandwidth == pytest.approx(between, **close)
    if name == "gb200-nvl72":
        assert p.devices_per_node == node["num_gpus_per_rack"]
    else:
        assert p.devices_per_node == node["num_gpus_per_node"]
    if name == "hgx-h200":  # the preset keeps 141e9 bytes (131.3 GiB); the spec says 141 GiB: left as it was
        assert gpu["mem_capacity"] == 141 * GIB and p.device.memory_bytes == pytest.approx(141e9, rel=1e-3)
    else:
        assert p.device.memory_bytes == pytest.approx(gpu["mem_capacity"], **close)
