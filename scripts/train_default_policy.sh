#!/usr/bin/env bash
# Train the default policy shipped in agents/policies/default.{zip,json}.
# Pool: configs/pools/default.yaml (42 scenarios: gpt2-xl, llama2-7b, llama3-8b,
# llama2-13b on dgx-a100 / dgx-h100, 1-2 nodes, every phase and objective, tight
# memory and device caps).
# Recipe: behaviour cloning of the dp optimum of every pool scenario and of its
# batch variants (--imitate: about 4 minutes of dp on one core, then seconds of
# fitting), then MaskablePPO with 4 envs in one process and random setups in half
# the episodes. PPO runs only TIMESTEPS steps (default 2048): longer PPO runs after
# the cloning made the held-out results worse (agents/policies/README.md has the
# figures). One torch thread. About 5 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/default-policy}
OMP_NUM_THREADS=1 "$PY" -m paratune._cli_rl train \
  --scenarios configs/pools/default.yaml --algo maskable-ppo --imitate --random-setup 0.5 \
  --timesteps "${TIMESTEPS:-2048}" --seed 0 --n-envs 4 --vec-env dummy --out "$OUT" --no-progress
cp "$OUT/policy.zip" agents/policies/default.zip
cp "$OUT/policy.json" agents/policies/default.json
