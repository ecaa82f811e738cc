"""`trashseg data ...` end to end, in process, on a local store and on the moto S3 server."""

from __future__ import annotations

import json

from cluster_helpers import FAKE_KEY, FAKE_SECRET, make_batch, make_dataset

from trashseg import storage
from trashseg.cli import main
from trashseg.data.prepare import dataset_hash


def test_push_versions_pull_inbox_on_local_store(tmp_path, capsys):
    store = str(tmp_path / "store")
    folder = make_dataset(tmp_path / "ds")
    assert main(["data", "push", str(folder), "--store", store]) == 0
    version = capsys.readouterr().out.strip()
    assert version == dataset_hash(folder)

    assert main(["data", "versions", "--store", store]) == 0
    assert capsys.readouterr().out.startswith(version)

    assert main(["data", "pull", "latest", str(tmp_path / "pulled"), "--store", store]) == 0
    assert (tmp_path / "pulled" / "train.json").read_bytes() == (folder / "train.json").read_bytes()

    batch = make_batch(tmp_path / "b1", n=1, seed=3)
    assert main(["data", "inbox", "push", str(batch), "week48", "--store", store]) == 0
    capsys.readouterr()
    assert main(["data", "inbox", "list", "--since", version, "--store", store]) == 0
    assert capsys.readouterr().out.split() == ["week48"]


def test_bad_input_exits_2_with_the_reason(tmp_path, capsys, caplog):
    assert main(["data", "pull", "abc", str(tmp_path / "x"), "--store", str(tmp_path / "empty")]) == 2
    assert "dataset version 'abc' not found" in caplog.text
    assert main(["data", "ensure-bucket", "s3://b/extra"]) == 2
    assert "expected s3://bucket" in caplog.text


def test_ensure_bucket_creates_once(moto_endpoint, monkeypatch, capsys):
    monkeypatch.setenv("TRASHSEG_S3_ENDPOINT", f"http://{moto_endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    assert main(["data", "ensure-bucket", "s3://cli-bucket"]) == 0
    assert main(["data", "ensure-bucket", "s3://cli-bucket"]) == 0
    assert capsys.readouterr().out.splitlines() == ["bucket cli-bucket created", "bucket cli-bucket already exists"]
    store = storage.open_store("s3://cli-bucket/p")
    store.put_json({"ok": True}, "x.json")
    assert json.loads(store.get_bytes("x.json")) == {"ok": True}
