"""Cross-fitted val scores: weights and gating fitted on one part of val, scored on the other.

Planted case, two models and two folds of val. Rows 0-3 of every image: model 0 is right and
sure, model 1 wrong and unsure (any weights up to 1:4 get them right); row 4: the reverse.
Rows 5-9 are fold-specific: in fold A model 0 is right (0.7) and model 1 wrong (0.8), in fold B
the reverse. No weights get rows 5-9 right in both folds, so weights fitted on all of val
fix one fold (in-sample pixel accuracy 0.75), while weights fitted on the other fold always
break the scored fold's rows 5-9 (held-out accuracy 0.5) - worse than model 0 alone (0.65).
"""

import json

import pytest
from recipe_builders import planted_cross_fit_case

from trashseg.ensemble import EnsembleConfig, cross_fit_folds, run_recipe
from trashseg.errors import ConfigError


def test_folds_are_balanced_stable_and_refuse_too_few_images():
    names = [f"img{i}.jpg" for i in range(7)]
    folds = cross_fit_folds(names, 3)
    assert sorted(len(f) for f in folds) == [2, 2, 3]
    assert sorted(n for f in folds for n in f) == sorted(names)
    assert all(f == [n for n in names if n in f] for f in folds)  # split order kept
    assert cross_fit_folds(names[::-1], 3) == [f[::-1] for f in folds]  # by name, not by position
    with pytest.raises(ConfigError, match="holdout_folds=3 but val has 2 image"):
        cross_fit_folds(names[:2], 3)
    with pytest.raises(ConfigError, match="holdout_folds must be >= 1"):
        EnsembleConfig(holdout_folds=0)


def test_held_out_scores_drive_the_selection(tmp_path):
    dirs = planted_cross_fit_case(tmp_path)
    config = EnsembleConfig(crf_enabled=False, consensus_enabled=False, workers=1, weight_grid=(0.0, 0.5, 1.0, 2.0))
    result = run_recipe(dirs["val"], dirs["test"], tmp_path / "data", tmp_path / "out", config)
    held_out, in_sample = result.scores, result.in_sample_scores
    assert "held-out (2-fold cross-fit" in result.scoring
    # Fitting on the images it scores fixes one fold's rows 5-9; held out, no fold gets them.
    assert in_sample["soft_vote"].pixel_accuracy == pytest.approx(0.75)
    assert held_out["soft_vote"].pixel_accuracy == pytest.approx(0.5)
    for stage in ("arch0", "arch1", "hard_vote"):  # nothing fitted: both figures agree
        assert held_out[stage].matrix == in_sample[stage].matrix
    assert held_out["arch0"].pixel_accuracy == pytest.approx(0.65)
    assert in_sample["soft_vote"].miou > in_sample["arch0"].miou > held_out["soft_vote"].miou
    assert result.selected_stage == "arch0"  # in-sample figures would have picked soft_vote
    # The final outputs keep the parameters fitted on all of val.
    assert result.weights[0] != result.weights[1] and sum(result.weights) == pytest.approx(1.0)

    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["selected_stage"] == "arch0" and report["scoring"] == result.scoring
    by_name = {s["name"]: s for s in report["stages"]}
    in_sample_by_name = {s["name"]: s for s in report["stages_in_sample"]}
    assert by_name["soft_vote"]["pixel_accuracy"] == pytest.approx(0.5)
    assert in_sample_by_name["soft_vote"]["pixel_accuracy"] == pytest.approx(0.75)
    assert report["selected_miou"] == pytest.approx(held_out["arch0"].miou)
    folds = report["cross_fit"]["folds"]
    assert [f["images"] for f in folds] == [2, 2]
    # Each fold's weights favour the model the *other* fold rewards.
    assert [max(f["weights"], key=f["weights"].get) for f in folds] == ["arch1", "arch0"]
    markdown = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "mIoU in-sample" in markdown and "held-out (2-fold cross-fit" in markdown
    assert (tmp_path / "out" / "heldout" / "stages" / "soft_vote" / "val" / "predictions.json").is_file()

    # Without the cross-fit the optimistic in-sample figure selects the fitted soft vote.
    optimistic = run_recipe(dirs["val"], dirs["test"], tmp_path / "data", tmp_path / "out1",
                            EnsembleConfig(crf_enabled=False, consensus_enabled=False, workers=1,
                                           weight_grid=(0.0, 0.5, 1.0, 2.0), holdout_folds=1))
    assert optimistic.selected_stage == "soft_vote"
    assert optimistic.scores["soft_vote"].pixel_accuracy == pytest.approx(0.75)
    assert "in-sample" in optimistic.scoring
    assert "Cross-fit: each fold scored with the weights fitted on the other folds" in markdown
    assert "| fold | images | weight arch0 | weight arch1 |" in markdown
