#!/usr/bin/env bash
# The browser for the dashboard's browser tests: Debian's Chromium and the playwright Python package.
#   bash scripts/browser.sh      install what is missing (idempotent: does nothing when both are there)
# Never runs `playwright install` (it downloads its own browsers; the tests drive /usr/bin/chromium instead).
# Chromium comes from apt-get (as root, or through sudo when available); playwright is pip-installed into the
# venv ($PARATUNE_VENV, default .venv). Prints the Chromium version at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PARATUNE_VENV:-.venv}
CHROMIUM=${PARATUNE_CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo -n); else
        echo "browser.sh: $CHROMIUM is missing and this user cannot apt-get install chromium" >&2; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${SUDO[@]}" apt-get install -y -q chromium >/dev/null 2>&1; then
        "${SUDO[@]}" apt-get update -q >/dev/null
        "${SUDO[@]}" apt-get install -y -q chromium >/dev/null
    fi
fi
if ! "$VENV/bin/python" -c 'import playwright.sync_api' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q playwright
fi
"$CHROMIUM" --version 2>/dev/null || true
