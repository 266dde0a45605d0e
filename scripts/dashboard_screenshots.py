"""Screenshots of the dashboard's main pages for docs/dashboard.md, from the demo campaign.

    .venv/bin/paratune campaign run configs/campaigns/demo.yaml     # once (about a minute)
    bash scripts/browser.sh                                         # Chromium + playwright, once
    .venv/bin/python scripts/dashboard_screenshots.py [RUN_DIR] [--out docs/screenshots]

The demo has no two-objective scenario, so a small ``tbt+memory`` campaign (two
Optuna samplers on Llama-3-8B decode) is run into a temporary folder and shown
next to it: the dashboard reads many campaigns at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import yaml

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = [  # file, path (filters in the query), what to wait for
    ("overview.png", "/", "#campaigns-table"),
    ("leaderboard.png", "/leaderboard?campaign=demo", "#gap-heatmap .main-svg"),
    ("anytime.png", "/anytime?scenario=demo: llama2-13b-a100x2-decode-24g", "#anytime-w-0 .main-svg"),
    ("pareto.png", "/pareto", "#pareto-0 .main-svg"),
    ("plans.png", "/plans?scenario=demo: llama2-7b-a100-train&tuner=optuna-tpe", "#plan-gantt .main-svg"),
    ("transfer.png", "/transfer?campaign=demo", "#transfer-graph .main-svg"),
    ("studies.png", "/studies?campaign=demo", "#study-0-fig-0 .main-svg"),
]


def pareto_campaign(folder: Path) -> Path:
    from paratune.campaign import CampaignSpec, create_campaign, work

    spec = {
        "name": "pareto-demo",
        "description": "TBT vs peak memory per device: Pareto fronts of two Optuna samplers.",
        "scenarios": [
            {
                "name": "llama3-8b-a100-decode-tbt+memory",
                "model": "llama3-8b",
                "platform": "dgx-a100",
                "phase": "decode",
                "objective": "tbt+memory",
                "batch": 64,
                "context": 2048,
            }
        ],
        "tuners": ["megatron", {"name": "optuna-nsga2", "budget": 300}, {"name": "optuna-random", "budget": 300}],
        "seeds": 2,
        "output": str(folder / "pareto-demo"),
    }
    path = folder / "pareto-demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    located = create_campaign(CampaignSpec.load(path), path)
    work(located.storage, located.name, output=located.output, say=lambda _line: None)
    return located.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default="runs/demo")
    parser.add_argument("--out", default="docs/screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from paratune.dashboard import create_app

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        extra = pareto_campaign(Path(tmp))
        app = create_app([args.run_dir, extra])
        server = make_server("127.0.0.1", 0, app.server, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(30_000)
                for name, path, selector in PAGES:
                    page.goto(base + path)
                    page.wait_for_selector(selector)
                    page.wait_for_timeout(800)  # let Plotly finish its transitions
                    page.screenshot(path=str(out / name), full_page=True)
                    print(out / name)
                browser.close()
        finally:
            server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
