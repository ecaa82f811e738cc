"""Hostile manifests, repair, immutable inbox batches, full disks and network faults (issue 14).

Each test fails on the code before the fix; the last one drives the CLI through a
fault-injecting proxy in front of moto for a bounded number of rounds.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from pathlib import Path

import pytest
from cluster_helpers import (
    FAKE_KEY,
    FAKE_SECRET,
    FAST_RETRY,
    FaultyProxy,
    make_batch,
    make_dataset,
    new_bucket,
    s3_settings,
    write_image,
)
from test_cluster_storage import corrupt

from trashseg import storage
from trashseg.cli import main
from trashseg.data.version import dataset_hash
from trashseg.errors import ConfigError, DataError
from trashseg.storage import (
    IntegrityError,
    LocalStore,
    RetryPolicy,
    S3Settings,
    S3Store,
    StorageError,
)


def manifest_key(version: str) -> str:
    return f"datasets/{version}/manifest.json"


def tamper_manifest(store, version: str, edit) -> None:
    """Rewrite a version's manifest through the store (so its own checksum is valid)."""
    data = store.get_json(manifest_key(version))
    edit(data)
    store.put_json(data, manifest_key(version))


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- security: a manifest cannot steer writes or swap content --------------------------------


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/trashseg-absolute-escape.txt", "a/../../escaped.txt",
                                  "batch_01\\..\\..\\escaped.txt"])
def test_pull_refuses_manifest_paths_outside_the_destination(store, tmp_path, evil):
    version = storage.push_dataset(make_dataset(tmp_path / "ds"), store).version
    tamper_manifest(store, version, lambda m: m["files"].append({"path": evil, "size": 1, "sha256": "0" * 64}))
    dest = tmp_path / "out" / "pulled"
    with pytest.raises(DataError, match="refusing manifest entry"):
        storage.pull_dataset(store, version, dest)
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []  # nothing written, no staging left
    assert not (tmp_path / "out" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/trashseg-absolute-escape.txt").exists()


def test_pull_refuses_rewritten_manifest_plus_rewritten_objects(store, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    version = storage.push_dataset(folder, store).version
    # An attacker swaps an image and updates the manifest to match: every per-file check passes.
    forged = tmp_path / "forged.jpg"
    write_image(forged, seed=123)
    info = store.put_file(forged, f"datasets/{version}/files/batch_01/0001.jpg")

    def swap(manifest):
        for entry in manifest["files"]:
            if entry["path"] == "batch_01/0001.jpg":
                entry.update(size=info.size, sha256=info.sha256)

    tamper_manifest(store, version, swap)
    with pytest.raises(IntegrityError, match="hashes to .*push --repair"):
        storage.pull_dataset(store, version, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()

    # A file the hash does not cover, smuggled in with a manifest entry, is refused too.
    storage.push_dataset(folder, store, repair=True)
    extra = store.put_bytes(b"run me", f"datasets/{version}/files/README.txt")
    tamper_manifest(store, version, lambda m: m["files"].append(
        {"path": "README.txt", "size": extra.size, "sha256": extra.sha256}))
    with pytest.raises(IntegrityError, match="does not cover: README.txt"):
        storage.pull_dataset(store, version, tmp_path / "pulled")


def test_manifest_naming_another_version_is_refused(store, tmp_path):
    version = storage.push_dataset(make_dataset(tmp_path / "ds"), store).version
    tamper_manifest(store, version, lambda m: m.update(version="f" * 64))
    with pytest.raises(IntegrityError, match="claims version"):
        storage.pull_dataset(store, version, tmp_path / "pulled")


# --- repair, and files the hash does not cover ------------------------------------------------


def test_push_refuses_files_the_version_hash_does_not_cover(store, tmp_path):
    folder = make_dataset(tmp_path / "ds")
    (folder / "README.txt").write_text("notes")
    with pytest.raises(DataError, match=r"1 file\(s\) that no annotation file names: README.txt"):
        storage.push_dataset(folder, store)
    (folder / "README.txt").unlink()
    storage.push_dataset(folder, store)
    (folder / "README.txt").write_text("notes")  # the same version exists now: still refused, never dropped
    with pytest.raises(DataError, match="README.txt"):
        storage.push_dataset(folder, store)


def test_push_repair_restores_a_damaged_version(store, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    folder = make_dataset(tmp_path / "ds", n=4)
    version = storage.push_dataset(folder, store).version
    files = f"datasets/{version}/files"
    corrupt(store, f"{files}/batch_01/0001.jpg", b"not a jpeg")
    store.delete(f"{files}/batch_01/0002.jpg")
    store.put_bytes(b"stray", f"{files}/stray.bin")
    location = store.location if isinstance(store, S3Store) else str(store.root)

    with pytest.raises(IntegrityError, match=r"trashseg data push --repair FOLDER"):
        storage.pull_dataset(store, version, tmp_path / "broken")
    with pytest.raises(IntegrityError, match=r"is damaged \(3 problem.*nothing was uploaded.*push --repair"):
        storage.push_dataset(folder, store)  # a plain push uploads nothing, and says so
    with pytest.raises(IntegrityError):
        storage.pull_dataset(store, version, tmp_path / "broken")

    if isinstance(store, LocalStore):  # the CLI path, on the store it can open without env
        assert main(["data", "push", "--repair", str(folder), "--store", location]) == 0
    else:
        storage.push_dataset(folder, store, repair=True)
    assert "repaired dataset version" in caplog.text
    assert f"{files}/stray.bin" not in store.keys(files)
    storage.pull_dataset(store, version, tmp_path / "pulled")
    assert files_under(tmp_path / "pulled") == files_under(folder)


# --- inbox batches are immutable; writers never mix ----------------------------------------


def test_plain_push_of_a_damaged_version_exits_non_zero_naming_repair(tmp_path, caplog):
    store = LocalStore(tmp_path / "store")
    folder = make_dataset(tmp_path / "ds")
    version = storage.push_dataset(folder, store).version
    assert main(["data", "push", str(folder), "--store", str(store.root)]) == 0  # intact: a no-op
    (store.root / f"datasets/{version}/files/batch_01/0001.jpg").write_bytes(b"cut")  # behind the store's back
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["data", "push", str(folder), "--store", str(store.root)]) == 2
    assert "is damaged" in caplog.text and "batch_01/0001.jpg" in caplog.text and "data push --repair" in caplog.text
    assert main(["data", "push", "--repair", str(folder), "--store", str(store.root)]) == 0
    assert main(["data", "push", str(folder), "--store", str(store.root)]) == 0


def test_repair_deletes_stray_dot_dot_keys_by_name_without_following_them(moto_endpoint, tmp_path, caplog):
    import boto3  # minio refuses `..` names, so another tool writes them, as in the field

    store = S3Store(new_bucket(moto_endpoint), "root", settings=s3_settings(moto_endpoint), retry=FAST_RETRY)
    folder = make_dataset(tmp_path / "ds")
    version = storage.push_dataset(folder, store).version
    client = boto3.client("s3", endpoint_url=f"http://{moto_endpoint}", aws_access_key_id=FAKE_KEY,
                          aws_secret_access_key=FAKE_SECRET, region_name="us-east-1")
    files = f"root/datasets/{version}/files"
    evil = [f"{files}/../manifest.json", f"{files}/batch_01/../../../../x", f"{files}/..", f"{files}/./y"]
    for name in evil:
        client.put_object(Bucket=store.bucket, Key=name, Body=b"evil")
    with pytest.raises(IntegrityError, match=r"stray object .*\.\..*--repair"):
        storage.push_dataset(folder, store)
    with caplog.at_level(logging.WARNING):
        storage.push_dataset(folder, store, repair=True)
    names = {o["Key"] for o in client.list_objects_v2(Bucket=store.bucket)["Contents"]}
    assert not names & set(evil)
    assert f"root/datasets/{version}/manifest.json" in names  # `files/../manifest.json` was not followed
    storage.pull_dataset(store, version, tmp_path / "pulled")
    assert files_under(tmp_path / "pulled") == files_under(folder)


def test_a_batch_name_too_long_for_the_filesystem_is_one_line(tmp_path, caplog):
    batch = make_batch(tmp_path / "batch", 2, seed=1)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(["data", "inbox", "push", str(batch), "b" * 300, "--store", str(tmp_path / "store")])
    assert code == 2 and "too long" in caplog.text and "Traceback" not in caplog.text


def test_inbox_batch_name_cannot_be_overwritten(store, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    first = make_batch(tmp_path / "b1", n=2, seed=10)
    second = make_batch(tmp_path / "b2", n=3, seed=20)
    storage.push_batch(first, store, "week48")
    with pytest.raises(DataError, match="'week48' already exists .* immutable"):
        storage.push_batch(second, store, "week48")
    assert files_under(storage.pull_batch(store, "week48", tmp_path / "back")) == files_under(first)
    # The very same batch again (a retried command) uploads nothing and succeeds.
    storage.push_batch(first, store, "week48")
    assert "already in" in caplog.text and storage.list_batches(store) == ["week48"]


def test_inbox_cli_refuses_a_second_push_with_exit_2(tmp_path, caplog):
    location = str(tmp_path / "store")
    assert main(["data", "inbox", "push", str(make_batch(tmp_path / "b1", n=1, seed=1)), "wk", "--store", location]) == 0
    assert main(["data", "inbox", "push", str(make_batch(tmp_path / "b2", n=1, seed=2)), "wk", "--store", location]) == 2
    assert "immutable" in caplog.text


def test_batch_pushed_before_name_markers_is_not_overwritten(store, tmp_path):
    old = make_batch(tmp_path / "old", n=1, seed=5)
    store.put_folder(old / "images", "inbox/legacy/images")
    store.put_file(old / "annotations.json", "inbox/legacy/annotations.json")
    with pytest.raises(DataError, match="immutable"):
        storage.push_batch(make_batch(tmp_path / "new", n=1, seed=6), store, "legacy")


def test_concurrent_pushes_under_one_name_never_mix(store, tmp_path):
    batches = [make_batch(tmp_path / f"b{i}", n=4, seed=100 * i) for i in range(2)]
    for round_ in range(4):
        name = f"race-{round_}"
        start = threading.Barrier(2)
        outcomes: list[object] = [None, None]

        def push(i, name=name, start=start, outcomes=outcomes):
            start.wait()
            try:
                storage.push_batch(batches[i], store, name)
                outcomes[i] = "ok"
            except DataError as error:
                outcomes[i] = error

        threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, o in enumerate(outcomes) if o == "ok"]
        assert len(winners) == 1, outcomes
        assert "immutable" in str(outcomes[1 - winners[0]])
        pulled = storage.pull_batch(store, name, tmp_path / f"pulled-{round_}")
        assert files_under(pulled) == files_under(batches[winners[0]])


def test_local_readers_never_see_checksum_and_bytes_disagree(tmp_path):
    store = LocalStore(tmp_path / "store")
    payloads = [os.urandom(20_000) for _ in range(2)]
    store.put_bytes(payloads[0], "k/obj")
    stop, seen, errors = threading.Event(), [], []

    def write(i):
        for _ in range(60):
            store.put_bytes(payloads[i], "k/obj")

    def read():
        while not stop.is_set():
            try:
                seen.append(store.get_bytes("k/obj"))
            except IntegrityError as error:  # before the fix: checksum of one write, bytes of the other
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert errors == [] and seen and all(s in payloads for s in seen)
    assert store.get_bytes("k/obj") in payloads  # the writers' race left one whole object


# --- disk full ---------------------------------------------------------------------------------


def test_pull_on_a_full_disk_reports_path_and_free_space_and_cleans_up(tmp_path, monkeypatch, caplog):
    location = tmp_path / "store"
    version = storage.push_dataset(make_dataset(tmp_path / "ds", n=3), LocalStore(location)).version
    real = LocalStore._download
    calls = []

    def fill_disk(self, key, out):
        calls.append(key)
        if len(calls) == 3:
            out.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, out)

    monkeypatch.setattr(LocalStore, "_download", fill_disk)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["data", "pull", version, str(out / "pulled"), "--store", str(location)]) == 2
    assert "Traceback" not in caplog.text
    assert "No space left on device" in caplog.text and "iB free on " in caplog.text and "cannot write" in caplog.text
    assert list(out.iterdir()) == []  # no partial file, no half-pulled folder


# --- network faults ---------------------------------------------------------------------------


def proxied_store(moto_endpoint, proxy, **settings) -> S3Store:
    bucket = new_bucket(moto_endpoint)
    return S3Store(bucket, settings=S3Settings(**{**vars(s3_settings(proxy.endpoint)), **settings}), retry=FAST_RETRY)


@pytest.mark.parametrize("fault", ["cut-headers", "cut-body"])
def test_reply_cut_short_is_retried_not_called_tampering(moto_endpoint, faulty_proxy, tmp_path, fault):
    proxy = faulty_proxy(lambda i, method: None, seed=7)
    store = proxied_store(moto_endpoint, proxy)
    payload = os.urandom(5000)
    store.put_bytes(payload, "k/obj")
    for round_ in range(6):  # each round cuts the GET (and the HEAD) at another point
        start = len(proxy.requests)
        proxy.plan = lambda i, method, start=start: fault if i in (start, start + 1) else None
        assert store.get_bytes("k/obj") == payload
        assert store.stat("k/obj").sha256
        start = len(proxy.requests)
        proxy.plan = lambda i, method, start=start: fault if i == start else None
        assert store.keys("k") == ["k/obj"]  # a listing cut short is retried as well
        assert proxy.failures() >= 3 * (round_ + 1)


def test_complete_reply_without_checksum_is_still_an_integrity_error(moto_endpoint, faulty_proxy, tmp_path):
    proxy = faulty_proxy(lambda i, method: None)
    store = proxied_store(moto_endpoint, proxy)
    import io

    store.client.put_object(store.bucket, "foreign.bin", io.BytesIO(b"x"), 1)
    with pytest.raises(IntegrityError, match="not written by trashseg"):
        store.get_file("foreign.bin", tmp_path / "f")
    with pytest.raises(IntegrityError, match="not written by trashseg"):
        store.stat("foreign.bin")


def test_stalled_server_gives_up_at_the_deadline(moto_endpoint, faulty_proxy, caplog):
    proxy = faulty_proxy(lambda i, method: "stall", stall_s=5.0)
    store = proxied_store(moto_endpoint, proxy, read_timeout_s=0.3, deadline_s=1.5)
    store.retry = RetryPolicy(attempts=100, backoff_s=0.05, max_backoff_s=0.1)
    begin = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(StorageError, match="deadline.*TRASHSEG_S3_DEADLINE_S"):
        store.get_bytes("k/obj")
    assert time.monotonic() - begin < 3.0
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert retries and "timed out" in retries[0].getMessage().lower()  # each retry is logged as it happens


def test_trickling_reply_is_cut_at_the_deadline(moto_endpoint, faulty_proxy):
    proxy = faulty_proxy(lambda i, method: None)
    store = proxied_store(moto_endpoint, proxy, read_timeout_s=0.5, deadline_s=0.8)
    store.put_bytes(os.urandom(4000), "k/obj")  # 4000 bytes at 20 B/s: 200 s, never idle for 0.5 s
    proxy.plan = lambda i, method: "trickle" if method == "GET" else None
    begin = time.monotonic()
    with pytest.raises(StorageError, match="passed its deadline .* while receiving data"):
        store.get_bytes("k/obj")
    assert time.monotonic() - begin < 2.5


def test_timeouts_and_deadline_come_from_the_environment():
    env = {"TRASHSEG_S3_ENDPOINT": "h:1", "TRASHSEG_S3_CONNECT_TIMEOUT_S": "2", "TRASHSEG_S3_READ_TIMEOUT_S": "7.5",
           "TRASHSEG_S3_DEADLINE_S": "90"}
    settings = S3Settings.from_env(env)
    assert (settings.connect_timeout_s, settings.read_timeout_s, settings.deadline_s) == (2.0, 7.5, 90.0)
    assert S3Settings.from_env({"TRASHSEG_S3_ENDPOINT": "h:1"}).read_timeout_s == 60.0
    for bad in ("0", "-1", "soon", "inf", "nan"):
        with pytest.raises(ConfigError, match=f"TRASHSEG_S3_DEADLINE_S='{bad}'"):
            S3Settings.from_env({**env, "TRASHSEG_S3_DEADLINE_S": bad})


def test_cli_under_a_fault_injecting_proxy_is_exact_or_fails_clearly(moto_endpoint, faulty_proxy, tmp_path,
                                                                     monkeypatch, caplog):
    """Bounded rounds of push + pull through resets, cut replies, 503 SlowDown and stalls:
    every pulled file is byte-identical or the command exits 2 with a clear error, and no
    command runs past its deadline."""
    deadline_s, rounds = 4.0, 12
    rng = random.Random(14)
    proxy = faulty_proxy(lambda i, method: None, seed=14, stall_s=3.0)
    bucket = new_bucket(moto_endpoint)
    for name, value in {"TRASHSEG_S3_ENDPOINT": f"http://{proxy.endpoint}", "AWS_ACCESS_KEY_ID": FAKE_KEY,
                        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_REGION": "us-east-1",
                        "TRASHSEG_S3_READ_TIMEOUT_S": "0.4", "TRASHSEG_S3_CONNECT_TIMEOUT_S": "1",
                        "TRASHSEG_S3_DEADLINE_S": str(deadline_s)}.items():
        monkeypatch.setenv(name, value)
    rate = [0.2]
    proxy.plan = lambda i, method: rng.choice(FaultyProxy.FAULTS) if rng.random() < rate[0] else None
    location = f"s3://{bucket}/root"
    exact = failed = 0
    for round_ in range(rounds):
        rate[0] = 0.85 if round_ % 6 == 5 else 0.2  # some rounds so faulty that they must fail, cleanly
        folder = make_dataset(tmp_path / f"ds{round_}", n=2, seed=10 * round_)
        caplog.clear()
        began = time.monotonic()
        pushed = main(["data", "push", str(folder), "--store", location])
        pulled_dir = tmp_path / f"pulled{round_}"
        pulled = main(["data", "pull", dataset_hash(folder), str(pulled_dir), "--store", location]) \
            if pushed == 0 else None
        elapsed = time.monotonic() - began
        # Each object operation has the deadline; a round makes ~8 of them, so this bounds a hang.
        assert elapsed < 8 * deadline_s, f"round {round_} took {elapsed:.1f}s"
        assert "not written by trashseg" not in caplog.text and "corrupt" not in caplog.text
        if pulled == 0:
            assert files_under(pulled_dir) == files_under(folder)
            exact += 1
        else:
            assert 2 in (pushed, pulled), (pushed, pulled)
            assert "failed" in caplog.text or "deadline" in caplog.text, caplog.text[-2000:]
            assert not pulled_dir.exists()
            failed += 1
    print(f"fault proxy: {exact} rounds exact, {failed} failed cleanly, {proxy.failures()} faults injected")
    assert proxy.failures() >= rounds  # the faults really happened
    assert exact >= rounds // 2, f"only {exact}/{rounds} rounds got through"
    assert failed >= 1  # the clean-failure path was exercised too


def test_unreadable_records_are_integrity_errors_not_tracebacks(tmp_path):
    store = LocalStore(tmp_path / "store")
    version = storage.push_dataset(make_dataset(tmp_path / "ds"), store).version
    store.put_bytes(b"{not json", manifest_key(version))
    with pytest.raises(IntegrityError, match="not a readable manifest.*--repair"):
        storage.list_versions(store)
    store.put_bytes(b"x", "k")
    (store.root / ".trashseg-meta" / "k.json").write_text("{}")
    with pytest.raises(IntegrityError, match="unreadable checksum record"):
        store.get_bytes("k")
