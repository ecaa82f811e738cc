"""Cross-fitted val scores: weights and gating fitted on one part of val, scored on the other.

Planted case, two models and two folds of val. Rows 0-3 of every image: model 0 is right and
sure, model 1 wrong and unsure (any weights up to 1:4 get them right); row 4: the reverse.
Rows 5-9 are fold-specific: in fold A model 0 is right (0.7) and model 1 wrong (0.8), in fold B
the reverse. No weights get rows 5-9 right in both folds, so weights fitted on all of val
fix one fold (in-sample pixel accuracy 0.75), while weights fitted on the other fold always
break the scored fold's rows 5-9 (held-out accuracy 0.5) - worse than model 0 alone (0.65).
"""

import json

import numpy as np
import pytest
from recipe_builders import planted_cross_fit_case, write_dataset, write_predictions

from trashseg.ensemble.config import EnsembleConfig
from trashseg.ensemble.holdout import cross_fit_folds
from trashseg.ensemble.recipe import run_recipe
from trashseg.errors import ConfigError
from trashseg.predictions import PredictionSet


def test_folds_are_balanced_stable_and_refuse_too_few_images():
    names = [f"img{i}.jpg" for i in range(7)]
    folds = cross_fit_folds(names, 3)
    assert sorted(len(f) for f in folds) == [2, 2, 3]
    assert sorted(n for f in folds for n in f) == sorted(names)
    assert all(f == [n for n in names if n in f] for f in folds)  # split order kept
    assert cross_fit_folds(names[::-1], 3) == [f[::-1] for f in folds]  # by name, not by position
    with pytest.raises(ConfigError, match="holdout_folds=3 but val has 2 image"):
        cross_fit_folds(names[:2], 3)
    with pytest.raises(ConfigError, match=r"holdout_folds=0: expected an integer in \[1, 100\]"):
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


def test_gating_is_decided_on_the_other_fold(tmp_path):
    """Three models; in a disputed region two say Paper (0.55), one Background (1.0): the soft
    vote says Background, consensus Paper. In fold A the truth there is Paper (8 rows), in fold
    B Background (4 rows). Decided on all val, gating takes consensus everywhere (mIoU 0.708);
    each fold decided on the other fold takes the wrong source for its disputed pixels."""
    names = [f"val/{i}.png" for i in range(4)]
    fold_a, _ = cross_fit_folds(names, 2)
    splits, probs = {"val": [], "test": []}, [{}, {}, {}]
    easy_bg = np.array([0.9, 0.1, 0.0, 0.0], np.float32)
    easy_paper = easy_bg[[1, 0, 2, 3]]
    for name in [*names, "test/0.png"]:
        in_a = name in fold_a or name.startswith("test")
        truth = np.zeros((12, 12), np.uint8)
        truth[2:4] = 1
        disputed = np.zeros((12, 12), bool)
        disputed[4:] = in_a
        disputed[8:] = True
        truth[disputed & in_a] = 1
        for m in range(3):
            p = np.where(truth[None] == 1, easy_paper[:, None, None], easy_bg[:, None, None]).astype(np.float32)
            p[:, disputed] = (np.array([0.45, 0.55, 0, 0], np.float32) if m < 2 else np.array([1.0, 0, 0, 0], np.float32))[:, None]
            probs[m][name] = p
        split = name.split("/")[0]
        splits[split].append((name, np.zeros((12, 12, 3), np.uint8), truth if split == "val" else None))
    write_dataset(tmp_path / "data", splits)
    dirs = {"val": [], "test": []}
    for m in range(3):
        for split in dirs:
            write_predictions(tmp_path / f"m{m}" / split, {n: p for n, p in probs[m].items() if n.startswith(split)},
                              {"architecture": f"arch{m}"})
            dirs[split].append(tmp_path / f"m{m}" / split)
    config = EnsembleConfig(weights=(1, 1, 1), crf_enabled=False, consensus_k=2, workers=1)
    result = run_recipe(dirs["val"], dirs["test"], tmp_path / "data", tmp_path / "out", config)

    assert result.in_sample_scores["gating"].miou == pytest.approx((0.75 + 2 / 3) / 2)
    assert result.scores["gating"].miou == pytest.approx((0.25 + 0.4) / 2)
    assert result.scores["consensus"].matrix == result.in_sample_scores["consensus"].matrix  # nothing fitted
    assert result.gating.use_ensemble == (False, False, False, False)  # the final decision, fitted on all val
    assert result.selected_stage == "arch0"  # ties consensus (same masks); held out, gating is worse
    held_out = PredictionSet.open(tmp_path / "out" / "heldout" / "stages" / "gating" / "val")
    decisions = held_out.source["decisions_by_group"]
    assert [d["classes"]["Paper"]["source"] for d in decisions] == ["soft_vote", "consensus"]
