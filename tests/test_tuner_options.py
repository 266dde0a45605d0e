"""Typed tuner options: one dataclass per tuner, checked when the tuner is built and when a campaign loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from paratune.campaign import CampaignSpec
from paratune.cli import app
from paratune.search import Family, make_tuner, tuner_class, tuner_entries, tuner_names

TINY = {"model": "llama2-7b:layers=4", "platform": "dgx-a100", "phase": "decode", "context": 512}


def test_the_class_is_the_one_source_of_name_family_description_and_options() -> None:
    entries = tuner_entries()
    assert [e.name for e in entries] == tuner_names()
    assert "rl" in tuner_names() and "dp" in tuner_names()
    for e in entries:
        cls = tuner_class(e.name)
        assert cls.name == e.name and cls.family == e.family and cls.description == e.description
        assert isinstance(e.family, Family) and e.description
        assert all(o.help for o in e.options), f"{e.name}: an option without help"
        tuner = make_tuner(e.name)  # the defaults are valid options
        assert tuner.name == e.name


def test_listing_tuners_imports_neither_optuna_nor_torch() -> None:
    code = (
        "import sys\n"
        "from paratune.search import tuner_entries\n"
        "names = [e.name for e in tuner_entries()]\n"
        "assert 'rl' in names and 'optuna-tpe' in names, names  # rl: the agents' entry point\n"
        "print(sorted(m for m in ('optuna', 'torch', 'stable_baselines3') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("dp", {"max_label": 10}, "dp: unknown option(s) max_label; allowed: max_micro_batches, recompute"),
        ("dp", {"max_labels": "10"}, "dp: option 'max_labels' must be of type int, got '10'"),
        ("dp", {"max_labels": True}, "dp: option 'max_labels' must be of type int, got True"),
        ("dp", {"recompute": "maybe"}, "dp: option 'recompute' is 'maybe'; allowed: search, off, on"),
        ("enumerate", {"micro_batches": 0}, "enumerate: option 'micro_batches' must be a positive integer, got 0"),
        ("megatron", {"tp": 8}, "megatron: unknown option(s) tp; allowed: none"),
        ("dag-exact", {"max_tasks": 2.5}, "dag-exact: option 'max_tasks' must be of type int, got 2.5"),
        ("optuna-tpe", {"space": "grid"}, "optuna-tpe: option 'space' is 'grid'; allowed: uniform, hybrid, placement"),
        ("optuna-tpe", {"polish": 1.5}, "optuna-tpe: option 'polish' must be <= 1.0, got 1.5"),
        ("optuna-tpe", {"warm_start": "no"}, "optuna-tpe: option 'warm_start' must be of type bool, got 'no'"),
        ("optuna-random", {"granularities": "layer"}, "option 'granularities' must be of type list of str | None"),
        ("optuna-tpe", {"sampler": "random"}, "option 'sampler' is fixed by the tuner's name"),
        ("rl", {"temperature": 0}, "rl: option 'temperature' must be > 0, got 0.0"),
        ("rl", {"sweep": 1}, "rl: option 'sweep' must be of type bool, got 1"),
    ],
)
def test_bad_options_name_the_tuner_the_option_and_what_is_allowed(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        make_tuner(name, **options)
    assert message in str(err.value)


def test_options_are_converted_to_their_types_and_recorded_as_given() -> None:
    t = make_tuner("optuna-tpe", granularities=["layer", "layers:2"], polish=0, max_stages=4)
    assert t.config.granularities == ("layer", "layers:2") and t.config.polish == 0.0
    assert isinstance(t.config.polish, float) and t.polish_share == 0.0
    assert t.options["granularities"] == ["layer", "layers:2"] and t.options["sampler"] == "tpe"
    dp = make_tuner("dp", max_labels=10)
    assert dp.config.max_labels == 10 and dp.config.recompute == "search" and dp.options == {"max_labels": 10}
    with pytest.raises(AttributeError):
        dp.config.max_labels = 3  # type: ignore[misc]  # frozen


def test_campaign_spec_refuses_a_misspelled_option_naming_the_tuner(tmp_path: Path) -> None:
    data = {"name": "x", "scenarios": [TINY], "tuners": ["megatron", {"name": "dp", "options": {"max_label": 10}}]}
    with pytest.raises(ValueError) as err:
        CampaignSpec.from_dict(data, where="spec.yaml", base=tmp_path)
    text = str(err.value)
    assert text.startswith("spec.yaml: field 'tuners[1].options' of tuner dp: unknown option(s) max_label")
    assert "allowed: max_micro_batches, recompute, replicas, micro_batches, max_labels" in text


def test_campaign_run_with_a_misspelled_option_exits_2(tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    data = {"name": "typo", "output": str(tmp_path / "run"), "scenarios": [TINY],
            "tuners": [{"name": "optuna-tpe", "options": {"max_stage": 4}}]}  # fmt: skip
    spec.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["campaign", "run", str(spec)])
    assert res.exit_code == 2, res.output
    assert "optuna-tpe: unknown option(s) max_stage; allowed:" in res.output
    assert not (tmp_path / "run").exists()  # nothing ran


def test_cli_lists_and_shows_the_options() -> None:
    res = CliRunner().invoke(app, ["tuners", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["rl"]["family"] == "rl"
    dp = {o["name"]: o for o in rows["dp"]["options"]}
    assert dp["max_labels"]["default"] == 300_000 and dp["max_labels"]["type"] == "int"
    assert dp["recompute"]["type"] == "'search' | 'off' | 'on'" and dp["recompute"]["help"]
    assert rows["megatron"]["options"] == []
    res = CliRunner().invoke(app, ["tuners", "show", "optuna-tpe", "--json"])
    assert res.exit_code == 0, res.output
    assert "polish" in {o["name"] for o in json.loads(res.output)["options"]}
    res = CliRunner().invoke(app, ["tuners", "show", "nope"])
    assert res.exit_code == 2 and "unknown tuner 'nope'" in res.output
