#!/usr/bin/env bash
# Train the default policy shipped in agents/policies/default.{zip,json}.
# Pool: configs/pools/default.yaml (52 scenarios: gpt2-xl, llama2-7b, llama3-8b,
# llama2-13b and Llama-3.2-3B / StarCoder2-7B shapes on dgx-a100 / dgx-h100, 1-2
# nodes, every phase and objective, tight memory and device caps).
# Recipe: behaviour cloning of the dp optimum of every pool scenario and of its
# batch variants, and under 4 other setups (replicas, micro-batches, recompute) per
# scenario drawn with the seed (--imitate --imitate-setups 4: about 6 minutes of dp
# on one core, then under a minute of fitting), then MaskablePPO with 4 envs in one
# process and random setups in half the episodes. PPO runs only TIMESTEPS steps
# (default 2048): longer PPO runs after the cloning made the held-out results worse
# (docs/rl.md has the figures). One torch thread. About 6.5 minutes on a 2-core machine.
# Seed 1 (SEED): of seeds 0-4 of this recipe, the one best on the validation split
# (python benchmarks/rl_transfer.py --split validation; docs/rl.md has the five).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/default-policy}
OMP_NUM_THREADS=1 "$PY" -m paratune.cli train \
  --scenarios configs/pools/default.yaml --algo maskable-ppo --imitate --imitate-setups 4 --random-setup 0.5 \
  --timesteps "${TIMESTEPS:-2048}" --seed "${SEED:-1}" --n-envs 4 --vec-env dummy --out "$OUT" --no-progress
cp "$OUT/policy.zip" agents/policies/default.zip
cp "$OUT/policy.json" agents/policies/default.json
