"""Storage against a real S3 server (moto on 127.0.0.1) and the local backend, same tests."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from cluster_helpers import (
    FAST_RETRY,
    make_batch,
    make_dataset,
    new_bucket,
    s3_settings,
    write_image,
)

from trashseg import storage
from trashseg.data.merge import merge_batches
from trashseg.data.prepare import dataset_hash
from trashseg.errors import ConfigError, DataError
from trashseg.storage import (
    IntegrityError,
    LocalStore,
    LocalWriteError,
    ObjectNotFound,
    RetryPolicy,
    S3Settings,
    S3Store,
    StorageError,
)
from trashseg.storage import local as local_backend

MiB = 1024 * 1024


def test_file_and_folder_round_trip(store, tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "a" / "b" / "deep.bin").write_bytes(os.urandom(3000))
    infos = store.put_folder(src, "models/run1")
    assert {i.key for i in infos} == {"models/run1/top.txt", "models/run1/a/b/deep.bin"}
    assert store.keys("models") == ["models/run1/a/b/deep.bin", "models/run1/top.txt"]
    assert store.stat("models/run1/top.txt").sha256 == hashlib.sha256(b"top").hexdigest()

    store.get_folder("models/run1", tmp_path / "back")
    for path in src.rglob("*"):
        if path.is_file():
            assert (tmp_path / "back" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert store.get_bytes("models/run1/top.txt") == b"top"
    with pytest.raises(ObjectNotFound, match="no object"):
        store.get_file("models/missing.txt", tmp_path / "x")
    with pytest.raises(DataError, match="invalid object key"):
        store.put_bytes(b"x", "../escape")
    store.delete("models/run1/top.txt")
    assert not store.exists("models/run1/top.txt")


def test_large_file_round_trip_is_multipart_on_s3(store, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MiB))  # 5 MiB parts -> 3 parts
    info = store.put_file(big, "weights/big.bin")
    assert info.size == 11 * MiB
    store.get_file("weights/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    if isinstance(store, S3Store):
        etag = store.client.stat_object(store.bucket, store._name("weights/big.bin")).etag
        assert etag.endswith("-3"), f"expected a 3-part multipart ETag, got {etag}"


def corrupt(store, key: str, data: bytes) -> None:
    """Replace an object's bytes behind the store's back, keeping its recorded checksum."""
    if isinstance(store, LocalStore):
        (store.root / key).write_bytes(data)
    else:
        recorded = store.stat(key).sha256
        store.client.put_object(store.bucket, store._name(key), io.BytesIO(data), len(data),
                                metadata={"sha256": recorded})


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_corrupt_object_is_detected_and_never_used(store, tmp_path, damage):
    good = os.urandom(4096)
    store.put_bytes(good, "data/x.bin")
    bad = bytes([good[0] ^ 1]) + good[1:] if damage == "flipped" else good[:1000]
    corrupt(store, "data/x.bin", bad)
    dest = tmp_path / "out" / "x.bin"
    with pytest.raises(IntegrityError, match="corrupt or truncated"):
        store.get_file("data/x.bin", dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temporary left behind


def test_object_without_checksum_is_refused(store, tmp_path):
    if isinstance(store, LocalStore):
        store.root.mkdir(parents=True)
        (store.root / "foreign.bin").write_bytes(b"x")
    else:
        store.client.put_object(store.bucket, store._name("foreign.bin"), io.BytesIO(b"x"), 1)
    with pytest.raises(IntegrityError, match="not written by trashseg"):
        store.get_file("foreign.bin", tmp_path / "f")


@pytest.mark.parametrize("fault", ["503", "reset"])
def test_transient_failures_are_retried(moto_endpoint, faulty_proxy, tmp_path, fault):
    bucket = new_bucket(moto_endpoint)
    proxy = faulty_proxy(lambda i, method: fault if i < 2 else None)
    store = S3Store(bucket, settings=s3_settings(proxy.endpoint), retry=FAST_RETRY)
    store.put_bytes(b"payload", "k/obj")
    assert proxy.failures() == 2
    start = len(proxy.requests)
    proxy.plan = lambda i, method: fault if i in (start, start + 1) else None
    assert store.get_bytes("k/obj") == b"payload"
    assert proxy.failures() == 4


def test_persistent_failure_gives_up_with_clear_error(moto_endpoint, faulty_proxy):
    proxy = faulty_proxy(lambda i, method: "503")
    store = S3Store(new_bucket(moto_endpoint), settings=s3_settings(proxy.endpoint), retry=FAST_RETRY)
    with pytest.raises(StorageError, match="failed 4 times.*SlowDown"):
        store.put_bytes(b"x", "k")
    assert len(proxy.requests) == 4


def test_non_transient_error_is_not_retried(moto_endpoint, faulty_proxy, tmp_path):
    proxy = faulty_proxy(lambda i, method: None)
    store = S3Store("no-such-bucket-here", settings=s3_settings(proxy.endpoint), retry=FAST_RETRY)
    with pytest.raises(ObjectNotFound):
        store.get_file("k", tmp_path / "k")
    assert len(proxy.requests) == 1


def test_interrupted_multipart_upload_leaves_no_object(moto_endpoint, faulty_proxy, tmp_path):
    bucket = new_bucket(moto_endpoint)
    # Initiate + first part go through, then every connection is reset: the upload dies mid-way.
    proxy = faulty_proxy(lambda i, method: "reset" if i >= 2 else None)
    store = S3Store(bucket, settings=s3_settings(proxy.endpoint), retry=RetryPolicy(attempts=1),
                    part_size=5 * MiB)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MiB))
    with pytest.raises(StorageError):
        store.put_file(big, "weights/big.bin")
    assert ("POST", None) in proxy.requests  # it was a multipart upload that started
    direct = S3Store(bucket, settings=s3_settings(moto_endpoint), retry=FAST_RETRY)
    assert not direct.exists("weights/big.bin")
    assert direct.keys() == []


def test_interrupted_local_write_leaves_no_object(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    store.put_bytes(b"old", "k/obj")

    def copy_half_then_fail(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_backend.shutil, "copyfile", copy_half_then_fail)
    with pytest.raises(LocalWriteError, match=r"cannot write .*k/obj.*No space left.*iB free on "):
        store.put_bytes(b"new bytes", "k/obj")
    with pytest.raises(LocalWriteError, match="No space"):
        store.put_bytes(b"new bytes", "k/fresh")
    monkeypatch.undo()
    assert store.keys() == ["k/obj"]  # no partial object, no visible temporary
    # the failed write changed neither half: the old bytes and their checksum are intact
    assert store.get_bytes("k/obj") == b"old"
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".partial")]


def test_dataset_versions_push_pull(store, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    manifest = storage.push_dataset(folder, store)
    assert manifest.version == dataset_hash(folder)
    local_files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert {f.key for f in manifest.files} == set(local_files)
    for f in manifest.files:
        assert f.size == local_files[f.key].stat().st_size
        assert f.sha256 == hashlib.sha256(local_files[f.key].read_bytes()).hexdigest()
    assert [m.version for m in storage.list_versions(store)] == [manifest.version]
    assert storage.push_dataset(folder, store) == manifest  # same content, same version, no re-upload

    pulled = tmp_path / "pulled"
    storage.pull_dataset(store, "latest", pulled)
    for rel, path in local_files.items():
        assert (pulled / rel).read_bytes() == path.read_bytes()
    assert dataset_hash(pulled) == manifest.version

    write_image(folder / "batch_01/0000.jpg", seed=99)
    second = storage.push_dataset(folder, store)
    assert second.version != manifest.version
    assert [m.version for m in storage.list_versions(store)] == [manifest.version, second.version]
    with pytest.raises(DataError, match="not found.*known versions"):
        storage.pull_dataset(store, "0" * 16, tmp_path / "nope")


def test_corrupt_dataset_file_fails_the_pull(store, tmp_path):
    manifest = storage.push_dataset(make_dataset(tmp_path / "ds"), store)
    corrupt(store, f"datasets/{manifest.version}/files/batch_01/0001.jpg", b"not a jpeg")
    with pytest.raises(IntegrityError):
        storage.pull_dataset(store, manifest.version, tmp_path / "pulled")


def test_interrupted_dataset_push_publishes_no_version(store, tmp_path, monkeypatch):
    folder = make_dataset(tmp_path / "ds", n=4)
    real_put_file = type(store).put_file
    calls = []

    def failing_put_file(self, src, key):
        calls.append(key)
        if len(calls) == 3:
            raise StorageError("connection lost")
        return real_put_file(self, src, key)

    monkeypatch.setattr(type(store), "put_file", failing_put_file)
    with pytest.raises(StorageError):
        storage.push_dataset(folder, store)
    monkeypatch.undo()
    assert storage.list_versions(store) == []
    assert not any(k.endswith("manifest.json") for k in store.keys())
    assert storage.push_dataset(folder, store).version == dataset_hash(folder)  # resumable


def test_inbox_new_batches_and_merge(store, tmp_path):
    base = storage.push_dataset(make_dataset(tmp_path / "ds", n=3), store)
    assert storage.new_batches(store, base.version) == []
    storage.push_batch(make_batch(tmp_path / "b1", n=2, seed=10), store, "2026-01-batch")
    # a batch still uploading (images but no annotation file yet) is not listed
    store.put_folder(make_batch(tmp_path / "b2", n=1, seed=20) / "images", "inbox/incomplete/images")
    assert storage.list_batches(store) == ["2026-01-batch"]
    assert storage.new_batches(store, base.version) == ["2026-01-batch"]

    merged = storage.absorb_inbox(store, base.version, tmp_path / "work", into="train.json")
    assert merged is not None and merged.parent == base.version
    assert merged.inbox_batches == ("2026-01-batch",)
    assert storage.new_batches(store, merged.version) == []
    assert storage.absorb_inbox(store, merged.version, tmp_path / "work2", into="train.json") is None

    storage.pull_dataset(store, merged.version, tmp_path / "merged")
    data = json.loads((tmp_path / "merged" / "train.json").read_text())
    assert [im["id"] for im in data["images"]] == [1, 2, 3, 4, 5]
    assert len({a["id"] for a in data["annotations"]}) == 5
    added = data["images"][3:]
    assert [im["file_name"] for im in added] == ["inbox/2026-01-batch/0000.jpg", "inbox/2026-01-batch/0001.jpg"]
    for im in added:
        assert (tmp_path / "merged" / im["file_name"]).is_file()
    # the batch's categories are matched by name: its id 1 (Metal) becomes the dataset's id 2
    batch_anns = [a for a in data["annotations"] if a["image_id"] in (4, 5)]
    assert [a["category_id"] for a in batch_anns] == [2, 1]


def test_merge_rejects_unknown_category(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    batch = make_batch(tmp_path / "b", n=1, seed=1, categories=("Metal", "Lava"))
    with pytest.raises(DataError, match="'Lava'.*expected one of: Paper, Metal"):
        merge_batches(dataset, {"b": batch}, tmp_path / "out", into="train.json")


def test_open_store_picks_the_backend_by_location(moto_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TRASHSEG_S3_ENDPOINT", f"http://{moto_endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    bucket = new_bucket(moto_endpoint)
    assert isinstance(storage.open_store(f"s3://{bucket}/x"), S3Store)
    assert isinstance(storage.open_store(tmp_path), LocalStore)


def test_s3_settings_from_env():
    settings = S3Settings.from_env({"TRASHSEG_S3_ENDPOINT": "https://minio.kubeflow:9000", "TRASHSEG_S3_SECURE": "false",
                                    "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
    assert (settings.endpoint, settings.secure) == ("minio.kubeflow:9000", True)  # the scheme wins
    assert "s3cr3t-value" not in repr(settings)  # credentials never reach logs
    assert S3Settings.from_env({"TRASHSEG_S3_ENDPOINT": "h:1", "TRASHSEG_S3_SECURE": "off"}).secure is False
    with pytest.raises(ConfigError, match="TRASHSEG_S3_ENDPOINT"):
        S3Settings.from_env({})
    with pytest.raises(ConfigError, match="TRASHSEG_S3_SECURE='maybe'"):
        S3Settings.from_env({"TRASHSEG_S3_ENDPOINT": "h:1", "TRASHSEG_S3_SECURE": "maybe"})
    with pytest.raises(ConfigError, match="both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        S3Settings.from_env({"TRASHSEG_S3_ENDPOINT": "h:1", "AWS_ACCESS_KEY_ID": "a"})
