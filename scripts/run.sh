#!/usr/bin/env bash
# paratune's one entry point for a fresh machine: sets itself up, then runs a job.
#   bash scripts/run.sh demo     the main job: the demo campaign (scenarios x tuners x seeds), then its HTML report
#   bash scripts/run.sh test     lint (ruff), types (mypy), the test suite (pytest)
#   bash scripts/run.sh setup    only create/refresh the virtual environment (.venv)
#   bash scripts/run.sh paratune ARGS...   run the CLI inside the environment
# Set-up: a venv in .venv (PARATUNE_VENV to move it); torch is installed as the CPU build 2.13.0 unless a
# torch is already importable there (users with GPUs keep theirs). Versions are pinned by constraints.txt
# (pip -c), so two clean installs fit the same numbers. Re-runs when pyproject.toml, constraints.txt or this
# script change.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PARATUNE_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "paratune needs Python >= 3.11" >&2; exit 1; }
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.paratune-setup" want
    want=$(cat pyproject.toml constraints.txt scripts/run.sh | sha256sum | cut -c1-16)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "setting up $VENV (once; about 2 minutes on a fresh machine)..." >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip
        local pins="$VENV/.paratune-constraints.txt"
        if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
            grep -v '^torch==' constraints.txt > "$pins"   # keep the torch that is there (a GPU build)
        else
            cp constraints.txt "$pins"
            "$VENV/bin/python" -m pip install -q -c "$pins" torch
        fi
        "$VENV/bin/python" -m pip install -q -c "$pins" -e ".[import,rl,dev,silicon,peer]"
        echo "$want" > "$stamp"
    fi
}

# mypy names modules after folders, and this checkout's folder may have any name (even one with a dot):
# check a tree named paratune made of links to the package's own files and folders.
typecheck() {
    local tree=build/typecheck/paratune
    rm -rf build/typecheck && mkdir -p "$tree"
    for f in *.py graphs costmodel problem serving envs agents search campaign dashboard study cli configs; do
        ln -s "$PWD/$f" "$tree/$f"
    done
    (cd build/typecheck && mypy --config-file ../../pyproject.toml -p paratune)
}

cmd=${1:-demo}
[ $# -gt 0 ] && shift
setup
export PATH="$PWD/$VENV/bin:$PATH"
case "$cmd" in
    setup) ;;
    demo)
        # the demo campaign: a few scenarios x heuristics, dp, two Optuna samplers and the shipped RL policy x 2 seeds
        paratune campaign run configs/campaigns/demo.yaml
        # a serving question: Llama-3-8B on one DGX H100 for chat traffic under TTFT / TPOT targets (the report shows it)
        paratune serve-tune -m llama3-8b -p dgx-h100 --workload chat --ttft-ms 500 --tpot-ms 20 --out runs/demo/serving
        paratune report runs/demo -o runs/demo/report.html
        echo
        echo "report:    runs/demo/report.html (one self-contained HTML file; open it in a browser)"
        echo "dashboard: bash scripts/run.sh paratune dashboard runs/   then open http://127.0.0.1:8050"
        ;;
    test)
        ruff check .
        ruff format --check .
        typecheck
        bash scripts/browser.sh >/dev/null   # Debian's Chromium and Playwright for the dashboard tests
        # a throwaway PostgreSQL server on 127.0.0.1 for the campaign tests (installs Debian's package if missing)
        PARATUNE_PG_URL="$(bash scripts/postgres.sh)"
        export PARATUNE_PG_URL
        trap 'bash scripts/postgres.sh stop >/dev/null 2>&1 || true' EXIT
        pytest -q "$@"
        ;;
    paratune) paratune "$@" ;;
    *) echo "usage: bash scripts/run.sh demo|test|setup|paratune ARGS..." >&2; exit 2 ;;
esac
