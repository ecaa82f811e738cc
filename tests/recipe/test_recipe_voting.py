"""Soft and hard voting, weights, ties, weight fitting, consensus overwrite and gating."""

import numpy as np
import pytest
from PIL import Image
from recipe_builders import one_hot, write_dataset, write_predictions

from trashseg.crf import CrfConfig, dense_crf
from trashseg.data.layout import PreparedDataset
from trashseg.ensemble.config import EnsembleConfig
from trashseg.ensemble.voting import (
    GatingDecision,
    apply_gating,
    consensus_overwrite,
    decide_gating,
    hard_vote,
    soft_vote,
)
from trashseg.ensemble.weight_fit import fit_weights
from trashseg.errors import ConfigError, DataError
from trashseg.metrics import ConfusionMatrix
from trashseg.predictions import PredictionSet


def _pixel(*probabilities):
    return np.array(probabilities, dtype=np.float32).reshape(-1, 1, 1)


def test_soft_and_hard_vote_differ_where_confidence_matters():
    # Two models lean to class 1 weakly, one is sure of class 2: the majority says 1,
    # the mean probability says 2.
    probs = [_pixel(0.0, 0.55, 0.45), _pixel(0.0, 0.55, 0.45), _pixel(0.0, 0.0, 1.0)]
    soft = soft_vote(probs, [1, 1, 1])
    np.testing.assert_allclose(soft[:, 0, 0], [0.0, 1.1 / 3, 1.9 / 3], rtol=1e-6)
    assert soft.argmax(0)[0, 0] == 2
    voted, share = hard_vote([p.argmax(0) for p in probs], 3)
    assert voted[0, 0] == 1
    np.testing.assert_allclose(share[:, 0, 0], [0, 2 / 3, 1 / 3])


def test_weights_move_the_soft_vote():
    probs = [_pixel(0.6, 0.4), _pixel(0.3, 0.7)]
    assert soft_vote(probs, [1, 1]).argmax(0)[0, 0] == 1  # mean 0.45 vs 0.55
    assert soft_vote(probs, [3, 1]).argmax(0)[0, 0] == 0  # 0.525 vs 0.475
    np.testing.assert_allclose(soft_vote(probs, [3, 1])[:, 0, 0], [0.525, 0.475], rtol=1e-6)
    assert soft_vote(probs, [0, 1]).argmax(0)[0, 0] == 1


def test_hard_vote_ties_go_to_the_higher_ranked_model():
    a, b, c = (np.array([[v, v]], dtype=np.uint8) for v in (2, 1, 3))
    voted, _ = hard_vote([a, b], 4)
    assert voted.tolist() == [[2, 2]]
    voted, _ = hard_vote([b, a], 4)
    assert voted.tolist() == [[1, 1]]
    # Model 0's class is not among the tied ones (1 and 3 have two votes each): the
    # highest-ranked model voting for a tied class decides.
    voted, _ = hard_vote([a, c, b, b, c], 4)
    assert voted.tolist() == [[3, 3]]


def test_fit_weights_prefers_the_accurate_model(tmp_path):
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 4, (16, 16)).astype(np.uint8) for _ in range(3)]
    items = [(f"{i}.png", np.zeros((16, 16, 3), np.uint8), t) for i, t in enumerate(targets)]
    dataset = write_dataset(tmp_path / "data", {"val": items})
    good = write_predictions(tmp_path / "good", {n: one_hot(t, 4, 0.6) for n, _, t in items}, {"name": "good"})
    noisy = {n: one_hot(rng.integers(0, 4, t.shape), 4, 0.9) for n, _, t in items}
    bad = write_predictions(tmp_path / "bad", noisy, {"name": "bad"})
    samples = dataset.samples("val")
    weights, miou = fit_weights([bad, good], samples, 4, grid=(0.0, 0.5, 1.0, 2.0), rounds=3, stride=1)
    assert weights == (0.0, 1.0)  # the noisy model is switched off
    assert miou == pytest.approx(1.0)
    assert weights[1] > weights[0]


def _crf_erases_small_object_case():
    """A 24x24 Paper object and a 3x3 Battery of the background's colour (the model is
    only 55% sure of it): DenseCRF smooths the Battery away, keeps the Paper."""
    image = np.full((64, 64, 3), 120, np.uint8)
    truth = np.zeros((64, 64), np.uint8)
    truth[20:44, 8:32] = 1
    truth[40:43, 50:53] = 3
    image[truth == 1] = (200, 200, 60)
    probs = np.full((4, 64, 64), 0.05, np.float32)
    probs[0] = 0.85
    probs[:, truth == 1] = np.array([0.1, 0.8, 0.05, 0.05])[:, None]
    probs[:, truth == 3] = np.array([0.35, 0.05, 0.05, 0.55])[:, None]
    return image, truth, probs


def test_consensus_restores_the_small_object_dense_crf_erased():
    image, truth, probs = _crf_erases_small_object_case()
    ensemble_mask = probs.argmax(0)
    assert (ensemble_mask == 3).sum() == 9
    refined = dense_crf(image, probs, CrfConfig()).argmax(0).astype(np.uint8)
    assert (refined == 3).sum() == 0, "the construction relies on DenseCRF erasing the Battery"
    assert (refined[truth == 1] == 1).all()

    models = [truth.copy(), truth.copy(), np.zeros_like(truth)]  # two of three see the Battery
    restored, changed = consensus_overwrite(refined, models, k=2, num_classes=4)
    np.testing.assert_array_equal(restored, truth)
    assert changed[truth == 3].all()
    # k=3: only one model short of agreement, nothing comes back.
    restored, changed = consensus_overwrite(refined, models, k=3, num_classes=4)
    assert (restored == 3).sum() == 0 and not changed.any()


def test_consensus_area_limit_keeps_only_small_components():
    refined = np.zeros((32, 32), np.uint8)
    agreed = np.zeros((32, 32), np.uint8)
    agreed[2:4, 2:4] = 3  # 4 pixels
    agreed[10:30, 10:30] = 2  # 400 pixels
    restored, _ = consensus_overwrite(refined, [agreed, agreed], k=2, num_classes=4, max_area=50)
    assert (restored == 3).sum() == 4
    assert (restored == 2).sum() == 0
    restored, _ = consensus_overwrite(refined, [agreed, agreed], k=2, num_classes=4)
    assert (restored == 2).sum() == 400
    # Background agreement never overwrites.
    refined[:] = 1
    restored, _ = consensus_overwrite(refined, [np.zeros_like(agreed)] * 2, k=2, num_classes=4)
    assert (restored == 1).all()
    with pytest.raises(ConfigError, match="consensus_k=3 but only 2 model"):
        consensus_overwrite(refined, [agreed, agreed], k=3, num_classes=4)


def test_gating_picks_the_better_source_per_class(tmp_path):
    truth = np.zeros((10, 10), np.uint8)
    truth[0:4, 0:4] = 1
    truth[6:10, 6:10] = 2
    # The ensemble gets class 1 exactly but overgrows class 2; the refined result is the reverse.
    ensemble = truth.copy()
    ensemble[5:10, 5:10] = 2
    refined = truth.copy()
    refined[0:4, 0:2] = 0
    scores = {}
    for name, mask in (("ensemble", ensemble), ("refined", refined)):
        matrix = ConfusionMatrix(3, ["bg", "one", "two"])
        matrix.update(mask, truth)
        scores[name] = matrix.compute()
    decision = decide_gating(scores["ensemble"], scores["refined"], "soft_vote", "consensus")
    assert decision.use_ensemble == (False, True, False)
    assert decision.to_dict()["classes"]["one"]["source"] == "soft_vote"
    assert decision.to_dict()["classes"]["two"]["source"] == "consensus"
    decision.save(tmp_path / "gating.json")
    assert GatingDecision.load(tmp_path / "gating.json") == decision
    gated, from_ensemble = apply_gating(ensemble, refined, decision.use_ensemble)
    np.testing.assert_array_equal(gated, truth)  # each class from its better source
    assert from_ensemble[0:4, 0:4].all() and not from_ensemble[6:10, 6:10].any()


def test_recipe_on_constructed_predictions(tmp_path):
    """Three models on the CRF case, all with the same pinholes of Background in the Paper:
    the votes keep the holes, CRF fills them but erases the Battery, consensus brings the
    Battery back; every stage is scored on val and the best is written."""
    from trashseg.ensemble.recipe import run_recipe

    image, truth, clean = _crf_erases_small_object_case()
    rng = np.random.default_rng(0)
    splits, model_probs = {}, [{}, {}, {}]
    for split in ("val", "test"):
        splits[split] = []
        for i in range(2):
            name = f"{split}/{i}.png"
            splits[split].append((name, image, truth if split == "val" else None))
            holes = (rng.random(truth.shape) < 0.05) & (truth == 1)
            for m in range(3):
                probs = clean.copy()
                probs[:, holes] = np.array([0.6, 0.35, 0.025, 0.025])[:, None]
                if m == 2:
                    probs[:, truth == 3] = np.array([0.9, 0.03, 0.03, 0.04])[:, None]  # misses the Battery
                model_probs[m][name] = probs
    write_dataset(tmp_path / "data", splits)
    val_dirs, test_dirs = [], []
    for m in range(3):
        for split, dirs in (("val", val_dirs), ("test", test_dirs)):
            probs = {n: p for n, p in model_probs[m].items() if n.startswith(split)}
            write_predictions(tmp_path / f"m{m}" / split, probs, {"architecture": f"arch{m}"})
            dirs.append(tmp_path / f"m{m}" / split)
    config = EnsembleConfig(weights=(1, 1, 1), workers=1, consensus_k=2)
    result = run_recipe(val_dirs, test_dirs, tmp_path / "data", tmp_path / "out", config)
    assert result.model_names == ("arch0", "arch1", "arch2")
    assert result.stages == ("arch0", "arch1", "arch2", "soft_vote", "hard_vote", "crf", "consensus", "gating")
    iou = {stage: result.scores[stage].iou["Battery"] for stage in result.stages}
    assert iou["crf"] == 0.0  # erased
    assert iou["consensus"] == pytest.approx(1.0)  # restored
    assert result.scores["consensus"].miou > result.scores["crf"].miou
    for stage in ("arch0", "soft_vote", "hard_vote"):
        assert result.scores["consensus"].miou > result.scores[stage].miou  # holes filled
    assert result.scores["consensus"].miou == pytest.approx(1.0)
    assert result.gating.use_ensemble == (False, False, False, False)
    assert result.selected_stage == "consensus"  # ties with gating; the earlier stage wins
    final_test = PredictionSet.open(result.final_dirs["test"])
    assert final_test.source["stage"] == result.selected_stage
    for name, _, _ in splits["test"]:
        np.testing.assert_array_equal(final_test.mask(name), truth)
    assert (tmp_path / "out" / "gating.json").is_file()
    for path in result.report_files.values():
        assert path.stat().st_size > 0

    # Again in a pool of 2 workers: same numbers; a pinned stage wins over the best one.
    pinned = run_recipe(val_dirs, test_dirs, tmp_path / "data", tmp_path / "out2",
                        EnsembleConfig(weights=(1, 1, 1), workers=2, pinned_stage="hard_vote", gating_enabled=False))
    assert pinned.selected_stage == "hard_vote"
    assert "gating" not in pinned.stages
    for stage in pinned.stages:
        assert pinned.scores[stage].matrix == result.scores[stage].matrix
    final_val = PredictionSet.open(pinned.final_dirs["val"])
    np.testing.assert_array_equal(final_val.mask("val/0.png"), PredictionSet.open(tmp_path / "out" / "stages" / "hard_vote" / "val").mask("val/0.png"))
    with pytest.raises(ConfigError, match="pinned_stage 'crf' is not a model or an enabled stage; choose from arch0"):
        run_recipe(val_dirs, test_dirs, tmp_path / "data", tmp_path / "out3",
                   EnsembleConfig(pinned_stage="crf", crf_enabled=False))
    with pytest.raises(DataError, match="not the same models in the same order"):
        run_recipe(val_dirs, test_dirs[::-1], tmp_path / "data", tmp_path / "out4", config)
    # An error inside a worker reaches the caller, naming the image.
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(PreparedDataset(tmp_path / "data").mask_path("val/1.png"))
    with pytest.raises(DataError, match="'val/1.png': ground-truth mask is 32x32 but the predictions are 64x64"):
        run_recipe(val_dirs, test_dirs, tmp_path / "data", tmp_path / "out5", EnsembleConfig(weights=(1, 1, 1), workers=2))


def test_ensemble_config_is_validated():
    from trashseg.config import load_config

    with pytest.raises(ConfigError, match=r"consensus_k=0: expected an integer in \[1, 1000\]"):
        EnsembleConfig(consensus_k=0)
    with pytest.raises(ConfigError, match=r"weights must be >= 0 and not all 0, got \[0.0, 0.0\]"):
        EnsembleConfig(weights=(0.0, 0.0))
    with pytest.raises(ConfigError, match="unknown key.*consensus_kk.*valid keys are: background_class"):
        load_config(EnsembleConfig, None, ["consensus_kk=2"])
    config = load_config(EnsembleConfig, None, ["crf.iterations=3", "weights=[2,1]", "pinned_stage=crf"])
    assert config.crf.iterations == 3 and config.weights == (2.0, 1.0)
