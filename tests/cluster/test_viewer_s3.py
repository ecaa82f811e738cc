"""The viewer reads s3:// sources through trashseg.storage (moto's S3 API on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

from cluster_helpers import FAKE_KEY, FAKE_SECRET, S3_REGION, new_bucket, s3_settings

import trashseg.viewer
from trashseg import secrets
from trashseg.data.layout import PreparedDataset
from trashseg.storage import open_store
from trashseg.viewer import logic
from trashseg.viewer.sources import CACHE_ENV, SOURCES_ENV, ViewerSources, local_copy


def test_an_s3_dataset_is_fetched_once_and_shown(sample_dataset, moto_endpoint, tmp_path, monkeypatch):
    bucket = new_bucket(moto_endpoint)
    open_store(f"s3://{bucket}/prepared", settings=s3_settings(moto_endpoint)).put_folder(sample_dataset, "")
    location = f"s3://{bucket}/prepared"
    for name, value in {secrets.ENV_ENDPOINT: moto_endpoint, secrets.ENV_SECURE: "false",
                        secrets.ENV_ACCESS_KEY: FAKE_KEY, secrets.ENV_SECRET_KEY: FAKE_SECRET,
                        secrets.ENV_REGION: S3_REGION, CACHE_ENV: str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    local = local_copy(location)
    assert local.is_relative_to(tmp_path / "cache")
    entries = logic.list_images(PreparedDataset(local), "val")
    assert len(entries) == len(PreparedDataset(sample_dataset).samples("val"))
    (local / "classes.json").write_text("changed")  # a second call uses the cache, no download
    assert local_copy(location) == local and (local / "classes.json").read_text() == "changed"

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(SOURCES_ENV, ViewerSources(data=f"s3://{bucket}/prepared").to_json())
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache2"))
    at = AppTest.from_file(str(Path(trashseg.viewer.__file__).parent / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    train = len(PreparedDataset(sample_dataset).samples("train"))
    assert any(f"**{train}** of {train} images match" in m.value for m in at.markdown)
