"""Cost-model speed figures (a benchmark, not a timed test).

Prints, and with ``--json`` writes as one JSON object (also to ``--out``):

* ``single_evals_per_s`` — ``AnalyticEvaluator.evaluate`` on random valid plans of llama2-70b decode,
  layer granularity, on dgx-h100x2 (16 GPUs), one core (target >= 10,000/s);
* ``batched_evals_per_s`` — the same problem through ``evaluate_batch`` (target >= 500,000/s);
* ``simulator_ms`` — discrete-event simulator, one evaluation of the op-granularity llama2-7b prefill
  graph imported with torch.export (about 1,300 tasks; the zoo graph when torch is missing) (target <= 50 ms);
* ``hf_import_s`` — ``hf:llama`` prefill import in a fresh process, torch import included (target <= 10 s);
* ``new_workload_evals_per_s`` — the serving analytic model on a new traffic per call (new lengths and rate),
  instance costs cached, no graph rebuild (target >= 5,000/s; ``_serving_speed.py``).

Run: ``python benchmarks/costmodel_speed.py [--json] [--out FILE]`` inside the project's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

TARGETS = {
    "single_evals_per_s": 10_000,
    "batched_evals_per_s": 500_000,
    "simulator_ms": 50,
    "hf_import_s": 10,
    "new_workload_evals_per_s": 5_000,
}

IMPORT_SNIPPET = """
import time, json
t0 = time.perf_counter()
from paratune.graphs import import_torch_graph
g = import_torch_graph("hf:llama", phase="prefill", batch=1, seq=2048)
print(json.dumps({"seconds": time.perf_counter() - t0, "tasks": g.num_tasks}))
"""


def measure_import() -> dict[str, Any]:
    """Import ``hf:llama`` in a fresh interpreter so torch's own import time is counted."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_SNIPPET], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"hf_import_s": None, "hf_import_error": proc.stderr.strip().splitlines()[-1:]}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"hf_import_s": data["seconds"], "hf_import_tasks": data["tasks"]}


def simulator_graph() -> Any:
    """The imported llama2-7b (hf:llama) op graph when torch is there, else the zoo's."""
    try:
        from paratune.graphs import import_torch_graph

        return import_torch_graph("hf:llama", phase="prefill", batch=1, seq=2048)
    except (ImportError, ValueError):
        from paratune.graphs import build_graph

        return build_graph("llama2-7b", phase="prefill", batch=1, seq=2048)


def main() -> None:
    from _analytic_speed import measure_analytic
    from _figures import emit, figure_parser, provenance
    from _serving_speed import measure_serving
    from _simulator_speed import measure_simulator

    args = figure_parser(__doc__).parse_args()

    figures: dict[str, Any] = {}
    figures.update(measure_analytic())
    graph = simulator_graph()
    figures.update(measure_simulator(graph))
    figures["simulator_tasks"] = graph.num_tasks
    figures.update(measure_import())
    figures.update(measure_serving())
    figures["targets"] = TARGETS
    figures["meets_targets"] = {
        k: (
            figures.get(k) is not None
            and (figures[k] <= v if k in ("simulator_ms", "hf_import_s") else figures[k] >= v)
        )
        for k, v in TARGETS.items()
    }
    figures["provenance"] = provenance()
    if emit(figures, args.out, args.json):
        return
    for key in TARGETS:
        value = figures.get(key)
        ok = "ok" if figures["meets_targets"][key] else "MISSED"
        shown = "n/a" if value is None else f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{key:>22}: {shown:>16}  (target {TARGETS[key]:,}) {ok}")


if __name__ == "__main__":
    main()
