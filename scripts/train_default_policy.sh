#!/usr/bin/env bash
# Train the default policy shipped in agents/policies/default.{zip,json}.
# Pool: configs/pools/default.yaml (24 scenarios: gpt2-xl, llama2-7b, llama3-8b,
# llama2-13b on dgx-a100 / dgx-h100, 1-2 nodes, every phase, several objectives).
# MaskablePPO, 4 envs in one process (the env is cheap: subprocesses would only
# add IPC on 2 cores), one torch thread. About 5 minutes on a 2-core machine (310 s measured, other work running).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/default-policy}
OMP_NUM_THREADS=1 "$PY" -m paratune._cli_rl train \
  --scenarios configs/pools/default.yaml --algo maskable-ppo \
  --timesteps "${TIMESTEPS:-300000}" --seed 0 --n-envs 4 --vec-env dummy --out "$OUT"
cp "$OUT/policy.zip" agents/policies/default.zip
cp "$OUT/policy.json" agents/policies/default.json
