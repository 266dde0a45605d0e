"""A small campaign for the dashboard tests, run in-process in a few seconds.

Three tiny scenarios (a 4-layer Llama on one DGX A100): a decode scenario named
``<script>alert(1)</script>`` (user strings must render as text), a prefill one,
and a two-objective ``tbt+memory`` one (a Pareto front; dp does not apply to it,
so its gaps refer to the best known value). Tuners: two heuristics, dp, and
optuna-random with a small budget over two seeds; and a small granularity study
on the prefill scenario (the Studies page).
"""

from __future__ import annotations

from pathlib import Path

import yaml

EVIL = "<script>alert(1)</script>"
TINY = {"model": "llama2-7b:layers=4", "platform": "dgx-a100", "context": 512}


def make_campaign(folder: Path, name: str = "fixture") -> Path:
    """Create and run the fixture campaign under ``folder``; returns its run folder."""
    from paratune.campaign import CampaignSpec, create_campaign, work

    spec_data = {
        "name": name,
        "description": "dashboard test fixture",
        "scenarios": [
            {**TINY, "name": EVIL, "phase": "decode", "objective": "tbt", "batch": 8},
            {**TINY, "name": "tiny-prefill", "phase": "prefill", "objective": "ttft", "batch": 4, "seq": 512},
            {**TINY, "name": "tiny-pareto", "phase": "decode", "objective": "tbt+memory", "batch": 16},
        ],
        "tuners": ["megatron", "balanced-pp", "dp", {"name": "optuna-random", "budget": 40}],
        "seeds": 2,
        "studies": [
            {
                "kind": "granularity",
                "scenarios": ["tiny-prefill"],
                "budget": 10,
                "tuners": ["dp", "megatron"],
                "granularities": ["layer", "layers:2"],
            },
        ],
        "output": str(folder / name),
    }
    spec_path = folder / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data, sort_keys=False))
    spec = CampaignSpec.load(spec_path)
    located = create_campaign(spec, spec_path)
    work(located.storage, located.name, output=located.output, say=lambda _line: None)
    return located.output
