"""Fixtures of the cluster room's tests: the programmable API server and a KubeClient talking to it."""

from collections.abc import AsyncIterator

import pytest

from scheduler.cluster.kube import KubeClient
from tests.fakes.apiserver import FakeApiServer


@pytest.fixture
async def api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer() as srv:
        yield srv


@pytest.fixture
async def kube(api: FakeApiServer) -> AsyncIterator[KubeClient]:
    client = api.client(token="token-1")
    yield client
    await client.close()
