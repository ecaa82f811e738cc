"""Fixtures for the cluster tests: a real S3 server (moto on 127.0.0.1), faulty proxies, stores."""

from __future__ import annotations

import pytest
from cluster_helpers import FAST_RETRY, FaultyProxy, Plan, new_bucket, s3_settings

from trashseg.storage import LocalStore, S3Store


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """host:port of moto's S3 API served over real HTTP on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """The same tests run against both backends."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint = request.getfixturevalue("moto_endpoint")
    return S3Store(new_bucket(endpoint), "root", settings=s3_settings(endpoint), retry=FAST_RETRY,
                   part_size=5 * 1024 * 1024)


@pytest.fixture
def faulty_proxy(moto_endpoint):
    """Factory: faulty_proxy(plan) -> FaultyProxy in front of the moto server."""
    proxies = []

    def make(plan: Plan, **options) -> FaultyProxy:
        proxy = FaultyProxy(moto_endpoint, plan, **options)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
