"""MoE blocks fitted on AIConfigurator's measured MoE tables: error per system and dtype, in-sample and held out.

Prints, and with ``--json`` writes as one JSON object (also to ``--out``), for every system
of the installed ``aiconfigurator-core`` with TensorRT-LLM ``moe_perf`` rows at expert
parallelism 1 (``costmodel/calibration/_aic_moe.py``):

* the engine version fitted and the model shapes it measured;
* in-sample MAPE, median and 90th-percentile |error| (%) of the grouped-GEMM terms on the
  balanced rows, per dtype (bf16, fp8), and per token range;
* the power-law rows (not fitted) priced as paratune prices a graph;
* leave-one-system-out within a family (H100 / H200; B200 / B300 / GB200 / GB300): fitted
  on the family's other systems, checked on the held-out one;
* the baseline: today's pricing of the same blocks (the preset's profile without a ``moe``
  section: the ``moe`` roofline curves, the activation as an element-wise op).

Run: ``python benchmarks/moe_fit.py [--systems h100_sxm,h200_sxm] [--json] [--out FILE]``
(about 30 s on one core; needs ``pip install 'paratune[silicon]'``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: The preset of each system's GPU (its shipped profile prices the baseline).
PRESETS = {
    "h100_sxm": "dgx-h100",
    "h200_sxm": "hgx-h200",
    "b200_sxm": "dgx-b200",
    "b300_sxm": "hgx-b300",
    "gb200": "gb200-nvl72",
    "l40s": "l40s-pcie",
    "rtx_pro_6000_server": "rtx-pro-6000",
}


def baseline(system: str, dtype: str, version: str) -> dict[str, Any] | None:
    """MAPE (%) of the preset's profile, without a ``moe`` section, on the balanced rows of ``system``."""
    import dataclasses

    import numpy as np

    from paratune.costmodel import KernelPricer, OpTable, get_platform
    from paratune.costmodel.calibration._aic_moe import KERNELS, MOE_DTYPES, _fittable, block_ops
    from paratune.costmodel.calibration._aiconfigurator import read_table

    if system not in PRESETS:
        return None
    plat = get_platform(PRESETS[system])
    plat = dataclasses.replace(plat, profile=dataclasses.replace(plat.profile, moe={}))
    pricer = KernelPricer(plat, dtype, phase="decode")
    name, elem = MOE_DTYPES[dtype]
    t = _fittable(read_table(system, "moe", "moe_perf", "trtllm", version))
    t = t.where((t["moe_dtype"] == name) & (t["distribution"] == "balanced"))
    ratios = []
    for i in range(len(t)):
        tokens, topk, experts = float(t["num_tokens"][i]), int(t["topk"][i]), int(t["num_experts"][i])
        gated = KERNELS[str(t["kernel_source"][i])]
        ops = block_ops(
            tokens,
            int(t["hidden_size"][i]),
            int(t["inter_size"][i]),
            topk,
            experts,
            gated=gated,
            elem_bytes=elem,
            touched=min(experts, tokens * topk),
        )
        ratios.append(pricer.op_times(OpTable.from_ops(ops), int(t["moe_tp_size"][i])).sum() / t["seconds"][i])
    err = np.abs(np.array(ratios) - 1.0) * 100.0
    return {
        "preset": PRESETS[system],
        "rows": len(err),
        "mape": round(float(err.mean()), 2),
        "median_ape": round(float(np.median(err)), 2),
        "median_ratio": round(float(np.median(ratios)), 3),
    }


def main() -> None:
    from _figures import emit, figure_parser, provenance

    from paratune.costmodel.calibration._aic_moe import FAMILIES, fit_moe, leave_one_out, moe_version
    from paratune.costmodel.calibration._aiconfigurator import package_version, systems

    parser = figure_parser(__doc__ or "")
    parser.add_argument("--systems", default="", help="comma-separated systems (default: every one with MoE rows)")
    args = parser.parse_args()
    chosen = [s for s in args.systems.split(",") if s] or systems()
    figures: dict[str, Any] = {"backend": "trtllm", "package_version": package_version(), "systems": {}}
    for system in chosen:
        fragment, report = fit_moe(system)
        entry: dict[str, Any] = {"version": report["version"], "dtypes": {}}
        if not fragment:
            entry["skipped"] = report["skipped"]
        for dtype, rep in report["dtypes"].items():
            if "in_sample" not in rep:
                entry["dtypes"][dtype] = rep
                continue
            entry["dtypes"][dtype] = {
                "terms": fragment["moe"][dtype],
                "in_sample": rep["in_sample"],
                "power_law": rep["power_law"],
                "baseline_today": baseline(system, dtype, report["version"]),
                "shapes": rep["shapes"],
            }
        figures["systems"][system] = entry
    figures["leave_one_system_out"] = {}
    for family, members in FAMILIES.items():
        present = tuple(s for s in members if s in chosen and moe_version(s) is not None)
        if len(present) < 2:
            continue
        figures["leave_one_system_out"][family] = {d: leave_one_out(present, d) for d in ("bf16", "fp8")}
    figures["provenance"] = provenance()
    if emit(figures, args.out, args.json):
        return
    _print(figures)


def _print(figures: dict[str, Any]) -> None:
    print(f"MoE blocks (trtllm moe_perf, EP 1, balanced) -- aiconfigurator-core {figures['package_version']}")
    print(f"{'system':22s}{'dtype':6s}{'version':12s}{'rows':>6s}{'MAPE':>7s}{'median':>8s}{'p90':>7s}"
          f"{'power-law':>11s}{'today':>8s}")  # fmt: skip
    for system, entry in figures["systems"].items():
        if "skipped" in entry:
            print(f"{system:22s}-- {entry['skipped']}")
            continue
        for dtype, d in entry["dtypes"].items():
            if "in_sample" not in d:
                print(f"{system:22s}{dtype:6s}-- {d.get('skipped', '')}")
                continue
            i, base = d["in_sample"], d["baseline_today"]
            law = d["power_law"].get("mape", float("nan"))
            today = f"{base['mape']:7.1f}%" if base else "      -"
            print(f"{system:22s}{dtype:6s}{entry['version']:12s}{i['rows']:6d}{i['mape']:6.1f}%{i['median_ape']:7.1f}%"
                  f"{i['p90_ape']:6.1f}%{law:10.1f}%{today}")  # fmt: skip
    print("\nleave-one-system-out (fitted on the family's other systems): MAPE / median |error| %")
    for family, per_dtype in figures["leave_one_system_out"].items():
        for dtype, held in per_dtype.items():
            cells = "  ".join(f"{s} {e['mape']:.1f}/{e['median_ape']:.1f}" for s, e in held.items())
            print(f"  {family:10s}{dtype:5s} {cells}")


if __name__ == "__main__":
    main()
