"""The serving-under-load study: the oracle bounds the static deployment, re-deciding never hurts, files read back."""

from __future__ import annotations

from paratune.search._serve import ServingProblem, ServingSpace
from paratune.serving import Lengths, Slo, Traffic
from paratune.study import load_study
from paratune.study._run import study_outputs
from paratune.study._serving_load import DECISIONS, run_serving_load_study

PROBLEM = ServingProblem(
    "llama3-8b",
    "dgx-h100",
    Traffic(Lengths("fixed", mean=1024.0), Lengths("fixed", mean=256.0), rate=1.0),
    Slo(ttft_ms=500.0, tpot_ms=20.0),
    gpus=4,
)
SPACE = ServingSpace(tp=(1, 2, 4), pp=(1,), max_num_seqs=(32, 256), max_batched_tokens=(1024, 8192))


def test_oracle_static_and_redecisions_are_ordered(tmp_path) -> None:
    data = run_serving_load_study(PROBLEM, loads=(0.2, 0.6, 0.95), space=SPACE, out_dir=tmp_path)
    regret = data["static"]["regret"]
    assert len(regret) == 3 and all(r >= -1e-12 for r in regret)
    for d in DECISIONS:
        assert all(p <= r + 1e-12 for p, r in zip(data["per_decision_regret"][d], regret, strict=True))
    # Re-deploying everything (layout and knobs) would be the oracle: the layout alone with the knobs kept
    # removes at least what the ratio alone does (the ratio is part of the layout).
    assert all(a <= b + 1e-12 for a, b in zip(data["per_decision_regret"]["layout"],
                                              data["per_decision_regret"]["ratio"], strict=True))  # fmt: skip
    assert data["peak_rate"] > 0 and data["candidates"] > 10
    back = load_study(tmp_path)
    assert back["kind"] == "serving-load"
    tables, figures, summary = study_outputs(back)
    assert tables[0].rows and figures and summary[0].startswith("llama3-8b")
    assert (tmp_path / "loads.csv").read_text().startswith("load,")


def test_the_command_line_runs_it_and_refuses_bad_loads(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from paratune.cli import app

    runner = CliRunner()
    base = ["study", "serving-load", "-m", "llama3-8b", "-p", "dgx-h100", "--gpus", "2", "-w", "fixed:512/fixed:64"]
    bad = runner.invoke(app, [*base, "--loads", "0.5,2", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--loads" in bad.output
    assert not (tmp_path / "bad").exists()
    ok = runner.invoke(app, [*base, "--loads", "0.3,0.9", "--tpot-ms", "30", "-o", str(tmp_path / "s"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["kind"] == "serving-load"
