"""Make the ``cpu-local`` profile: measure this machine (optional), fit, write the YAML.

    python scripts/calibrate_cpu_local.py [--measure] [--measurements DIR] [--out FILE]

``--measure`` runs ``paratune calibrate measure --device cpu`` into the measurements
folder first (about 2 minutes on 2 cores; run it on an otherwise idle machine:
``meta.json`` records the cores other processes used, and this script refuses to
fit a measurement where they used more than ``--max-other`` cores). The fit is
``fit_profile`` plus the attention curves (``fit_with_attention``); it is
deterministic, so without ``--measure`` it reproduces the committed profile from the
committed measurements (``configs/measurements/cpu-local``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from paratune.costmodel.calibration import fit_with_attention, measure, write_profile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true", help="measure this machine first")
    ap.add_argument("--measurements", type=Path, default=ROOT / "configs" / "measurements" / "cpu-local")
    ap.add_argument("--out", type=Path, default=ROOT / "configs" / "profiles" / "cpu-local.yaml")
    ap.add_argument("--max-other", type=float, default=0.15, help="max cores other processes may have used")
    args = ap.parse_args(argv)
    if args.measure:
        measure("cpu", args.measurements)
    meta = json.loads((args.measurements / "meta.json").read_text())
    busy = {k: v for k, v in (meta.get("other_processes_cores") or {}).items() if v is not None and v > args.max_other}
    if busy:
        print(f"refusing to fit: other processes used {busy} cores while measuring; measure again", file=sys.stderr)
        return 1
    result = fit_with_attention(args.measurements, "cpu", name="cpu-local")
    m = meta["machine"]
    where = args.measurements.resolve()
    where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
    source = (f"Fitted by scripts/calibrate_cpu_local.py (fit_profile + attention curves) to {where}, "
              f"measured {meta['date']} by `paratune calibrate measure --device cpu` on {m['cpu']} "
              f"({m['cores']} cores), torch {m['torch']}, {meta['dtype']}, {meta['threads_per_process']} torch "
              "thread per process (one cpu-local device)")  # fmt: skip
    write_profile(dataclasses.replace(result.profile, source=source), args.out)
    rep = result.report
    print(f"kernels: MAPE {rep['mape']:.1f}% over {rep['rows']} rows; attention: {json.dumps(rep.get('attention'))}")
    print(f"collectives: {json.dumps(rep.get('collectives'))}")
    print(f"profile written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
