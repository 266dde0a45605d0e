"""Platforms: presets carry the datasheet numbers; user files are validated by field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from paratune.costmodel import get_platform, platforms_dir, preset_names

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
        get_platform("dgx-b200")
