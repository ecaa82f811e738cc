"""Round selection: the run keeps the round with the better held-out val mIoU, and the
registry decision and the run status say which round won and by how much."""

import json
import math

import pytest
from mlflow.tracking import MlflowClient
from recipe_builders import planted_cross_fit_case

from trashseg.ensemble.config import EnsembleConfig
from trashseg.ensemble.recipe import run_recipe
from trashseg.errors import DataError
from trashseg.registry import write_bundle
from trashseg.rounds import RoundChoice, RoundScore, choose_round
from trashseg.steps import RunContext, record_status_step, register_step, select_round_step


def _round(name, miou, in_sample=math.nan):
    return RoundScore(name, miou, in_sample, "consensus", "held-out (2-fold cross-fit on val)")


def test_choose_round_keeps_the_better_round_and_the_base_on_a_tie():
    choice = choose_round([_round("base", 0.695), _round("pseudo", 0.665)])  # the demo's numbers
    assert choice.selected == "base" and choice.runner_up == "pseudo"
    assert choice.margin == pytest.approx(0.03)
    assert choice.reason == "round base won by +0.0300 held-out val mIoU (0.6950 vs 0.6650 for round pseudo)"
    assert choose_round([_round("base", 0.60), _round("pseudo", 0.62)]).selected == "pseudo"
    tie = choose_round([_round("base", 0.6), _round("pseudo", 0.6)])
    assert tie.selected == "base" and tie.margin == 0 and "earlier round wins a tie" in tie.reason
    unscored = choose_round([_round("base", 0.5), _round("pseudo", math.nan)])
    assert unscored.selected == "base" and math.isnan(unscored.margin)
    with pytest.raises(DataError, match="round names must be unique"):
        choose_round([_round("base", 0.5), _round("base", 0.6)])


def test_the_run_keeps_round_one_when_it_scores_better_held_out(tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "run-rounds-1")
    dirs = planted_cross_fit_case(tmp_path)
    data = tmp_path / "data"
    fast = dict(crf_enabled=False, consensus_enabled=False, workers=1, weight_grid=(0.0, 0.5, 1.0, 2.0))
    run_recipe(dirs["val"], dirs["test"], data, tmp_path / "base", EnsembleConfig(**fast))
    # The second round's ensemble is the fitted soft vote: better in-sample, worse held out.
    run_recipe(dirs["val"], dirs["test"], data, tmp_path / "pseudo", EnsembleConfig(**fast, pinned_stage="soft_vote"))

    run = RunContext(f"sqlite:///{tmp_path / 'mlflow.db'}", "rounds", "select-round")
    selected = select_round_step([("base", tmp_path / "base"), ("pseudo", tmp_path / "pseudo")],
                                 tmp_path / "selection.json", tmp_path / "selection.md", run=run)
    assert selected == "base"
    choice = RoundChoice.load(tmp_path / "selection.json")
    base, pseudo = choice.score("base"), choice.score("pseudo")
    assert pseudo.miou_in_sample > base.miou_in_sample  # in-sample would have kept the pseudo round
    assert base.miou > pseudo.miou and choice.margin == pytest.approx(base.miou - pseudo.miou)
    assert (base.stage, pseudo.stage) == ("arch0", "soft_vote")
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert saved["selected"] == "base" and saved["margin"] == pytest.approx(choice.margin)
    assert "Round kept: **base**" in (tmp_path / "selection.md").read_text()

    model_dir = tmp_path / "train" / "arch0"
    model_dir.mkdir(parents=True)
    (model_dir / "weights.json").write_text("{}")
    bundle = write_bundle({"segformer-b0-tiny": model_dir}, tmp_path / "bundle", dataset_version="v",
                          class_names=["Background", "Paper", "Metal", "Battery"])
    register_step(bundle.root, data, tmp_path / "decision.md", score=base.miou, model_name="rounds-model",
                  min_improvement=0.0, run=RunContext(run.tracking_uri, "rounds", "register"),
                  round_selection_path=tmp_path / "selection.json")
    decision = (tmp_path / "decision.md").read_text()
    assert "promoted to **champion**" in decision and choice.reason in decision
    client = MlflowClient(run.tracking_uri)
    experiment = client.get_experiment_by_name("rounds").experiment_id
    register_run = client.search_runs([experiment], "tags.`trashseg.step` = 'register'")[0]
    assert register_run.data.tags["round.selected"] == "base"
    assert float(register_run.data.tags["round.margin"]) == pytest.approx(choice.margin, abs=1e-6)

    (tmp_path / "status").mkdir()
    record_status_step("full", "SUCCEEDED", "", tmp_path / "status" / "summary.md",
                       run=RunContext(run.tracking_uri, "rounds", "status"))
    summary = (tmp_path / "status" / "summary.md").read_text()
    assert "## full: SUCCEEDED" in summary and choice.reason in summary
    status_run = client.search_runs([experiment], "tags.`trashseg.step` = 'status'")[0]
    assert status_run.data.tags["round.selected"] == "base" and status_run.data.tags["kfp.run_id"] == "run-rounds-1"
