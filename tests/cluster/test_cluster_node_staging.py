"""A TrainJob node stages its inputs and the mirrored checkpoint from S3 (moto on 127.0.0.1)."""

from __future__ import annotations

from cluster_helpers import FAKE_KEY, FAKE_SECRET, new_bucket

from trashseg.storage import open_store
from trashseg.trainjob.node import node_folder, stage_node
from trashseg.trainjob.spec import NodeTrainSpec


def _folder(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_local_rank_0_pulls_every_input_and_the_mirror_onto_a_fresh_node_folder(moto_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("TRASHSEG_S3_ENDPOINT", f"http://{moto_endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    checkpoints = f"s3://{new_bucket(moto_endpoint)}/checkpoints"
    run_store = open_store(f"{checkpoints}/run-7")
    # As the launcher stages them (under the run's store), and one input staged elsewhere.
    run_store.put_folder(_folder(tmp_path / "d", {"dataset.json": "{}", "train/a.png": "a"}), "staged/job/dataset")
    run_store.put_folder(_folder(tmp_path / "b", {"bundle.json": "{}"}), "staged/job/init_bundle")
    elsewhere = open_store(checkpoints.replace("/checkpoints", "/pseudo"))
    elsewhere.put_folder(_folder(tmp_path / "p", {"dataset.json": "{}"}), "round1")
    run_store.put_folder(_folder(tmp_path / "m", {"last.pt": "state", "config.json": "{}"}), "pseudo-segformer-b0-tiny")
    spec = NodeTrainSpec(
        run_id="run-7", architecture="segformer-b0-tiny", stage="pseudo", iterations=4, image_size=32,
        dataset_version="v", checkpoint_store=checkpoints, dataset_uri=run_store.uri("staged/job/dataset"),
        pseudo_dataset_uri=elsewhere.uri("round1"), pseudo_ratio=0.25, init_bundle_uri=run_store.uri("staged/job/init_bundle"),
    )
    folder = node_folder(spec, tmp_path / "node")
    _folder(folder, {"model/last.pt": "a previous attempt's, newer than the mirror", "stale.txt": "x"})

    stage_node(spec, folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["dataset/dataset.json", "dataset/train/a.png", "init-bundle/bundle.json", "model/config.json",
                     "model/last.pt", "pseudo-dataset/dataset.json"]
    assert (folder / "model/last.pt").read_text() == "state", "every node resumes from the mirror, not its own disk"
