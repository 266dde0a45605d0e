#!/usr/bin/env bash
# Train the shipped serving policy (agents/policies/serving.{zip,json}) from configs/pools/serving.yaml:
# behaviour cloning of the exhaustive optimum of each pool problem and of 6 variants of it, then MaskablePPO on
# paratune/Serving-v0 (agents/_serve_train.py: SERVING_TRAIN). Seeded throughout (seed 0); ~7 minutes on this 2-core machine.
set -euo pipefail
out="${1:-runs/serving-policy}"
OMP_NUM_THREADS=1 python - "$out" <<'PY'
import shutil, sys
from pathlib import Path

from paratune.agents import train_serving

out = Path(sys.argv[1])
result = train_serving("train", out=out)
meta = result.metadata
print(f"trained in {result.wall_s:.0f} s: {meta['timesteps']} PPO steps after cloning "
      f"{meta['imitation']['samples']} actions of {meta['imitation']['scenarios']} optima "
      f"(accuracy {meta['imitation']['accuracy']})")
policies = Path("agents/policies")
for suffix in (".zip", ".json"):
    shutil.copy(out / f"policy{suffix}", policies / f"serving{suffix}")
print("copied to agents/policies/serving.{zip,json}")
PY
