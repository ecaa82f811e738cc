import numpy as np
import pytest

from trashseg.data.classes import DEFAULT_TAXONOMY, ClassTable
from trashseg.errors import DataError
from trashseg.predictions import PredictionSet


def test_reference_categories_keep_their_ids():
    categories = [{"id": i, "name": n} for i, n in enumerate(DEFAULT_TAXONOMY) if i > 0]
    table = ClassTable.from_categories(list(reversed(categories)))
    assert table.names == DEFAULT_TAXONOMY
    assert table.category_to_class == {i: i for i in range(1, 11)}
    assert table.palette().shape == (11, 3)


def test_any_taxonomy_is_numbered_from_one_and_round_trips(tmp_path):
    table = ClassTable.from_categories([{"id": 40, "name": "cat"}, {"id": 7, "name": "dog"}])
    assert table.names == ("Background", "dog", "cat")
    assert table.category_to_class == {7: 1, 40: 2}
    assert len(set(map(tuple, table.palette()))) == 3
    table.save(tmp_path / "classes.json")
    assert ClassTable.load(tmp_path / "classes.json") == table


def test_category_zero_is_the_background():
    table = ClassTable.from_categories([{"id": 0, "name": "Backgroud"}, {"id": 1, "name": "x"}])
    assert table.names == ("Backgroud", "x")


def test_duplicate_names_rejected():
    with pytest.raises(DataError, match="duplicate"):
        ClassTable.from_categories([{"id": 1, "name": "x"}, {"id": 2, "name": "x"}])


@pytest.mark.parametrize("dtype, tolerance", [("uint8", 1 / 510 + 1e-6), ("float16", 1e-3)])
def test_prediction_set_round_trip(tmp_path, dtype, tolerance):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(8, 6)).transpose(2, 0, 1)
    created = PredictionSet.create(tmp_path, ["a", "b", "c"], dtype=dtype, source={"architecture": "x"})
    created.add("batch/0001.jpg", probs)
    created.save()
    opened = PredictionSet.open(tmp_path)
    assert opened.file_names == ["batch/0001.jpg"]
    assert opened.source == {"architecture": "x"}
    assert np.abs(opened.probs("batch/0001.jpg") - probs).max() <= tolerance
    np.testing.assert_array_equal(opened.mask("batch/0001.jpg"), probs.argmax(0))


def test_prediction_set_rejects_wrong_class_count_and_missing_folder(tmp_path):
    created = PredictionSet.create(tmp_path / "p", ["a", "b"])
    with pytest.raises(DataError, match=r"expected \(2, H, W\)"):
        created.add("x.jpg", np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="not a prediction folder"):
        PredictionSet.open(tmp_path / "missing")


def test_a_real_class_at_category_zero_gets_its_own_class_id():
    # The public 60-class trash dataset has "Aluminium foil" at COCO id 0.
    table = ClassTable.from_categories([{"id": 17, "name": "c"}, {"id": 0, "name": "Aluminium foil"}, {"id": 5, "name": "b"}])
    assert table.names == ("Background", "Aluminium foil", "b", "c")
    assert table.category_to_class == {0: 1, 5: 2, 17: 3}
    assert not table.is_identity
    assert "COCO category 0 -> class 1 (Aluminium foil)" in table.mapping_lines()
    assert ClassTable.default().is_identity
