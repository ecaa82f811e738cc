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
from recipe_builders import write_dataset, write_predictions

from trashseg.ensemble import EnsembleConfig, cross_fit_folds, run_recipe
from trashseg.errors import ConfigError

SIZE = 10


def _probs(truth: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(4, H, W): probability `right` on the true class (0 or 1), the rest on the other one."""
    probs = np.zeros((4, *truth.shape), np.float32)
    np.put_along_axis(probs, truth[None].astype(np.intp), right[None], axis=0)
    np.put_along_axis(probs, (1 - truth)[None].astype(np.intp), 1 - right[None], axis=0)
    return probs


def _planted(tmp_path, images: int = 4):
    rng = np.random.default_rng(0)
    val_names = [f"val/{i}.png" for i in range(images)]
    fold_a, _ = cross_fit_folds(val_names, 2)
    splits = {"val": [], "test": []}
    probs = [{}, {}]
    for name in [*val_names, "test/0.png"]:
        truth = rng.integers(0, 2, (SIZE, SIZE)).astype(np.uint8)
        right = [np.empty((SIZE, SIZE), np.float32) for _ in range(2)]
        right[0][:4], right[1][:4] = 0.9, 0.4
        right[0][4], right[1][4] = 0.4, 0.9
        first = 0 if name in fold_a or name.startswith("test") else 1
        right[first][5:], right[1 - first][5:] = 0.7, 0.2
        split = name.split("/")[0]
        splits[split].append((name, np.zeros((SIZE, SIZE, 3), np.uint8), truth if split == "val" else None))
        for m in range(2):
            probs[m][name] = _probs(truth, right[m])
    write_dataset(tmp_path / "data", splits)
    dirs = {"val": [], "test": []}
    for m in range(2):
        for split in dirs:
            write_predictions(tmp_path / f"m{m}" / split, {n: p for n, p in probs[m].items() if n.startswith(split)},
                              {"architecture": f"arch{m}"})
            dirs[split].append(tmp_path / f"m{m}" / split)
    return dirs


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
    dirs = _planted(tmp_path)
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
