"""Integration fixtures: a real nats-server, real worker processes, real gateways."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard.localstack import ROOT, LocalStack, _wait_for, free_port, running

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A nats-server alone (JetStream on), for tests that run worker code in process."""
    stack = LocalStack(var_dir=Path(tmp_path_factory.mktemp("nats")))
    try:
        stack.start_nats()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tutorial's own code under uvicorn: the reference for byte-for-byte checks."""
    port = free_port()
    log = tmp_path_factory.mktemp("tutorial") / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.tutorial_app:app", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def up() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=1)
            return True
        except OSError:
            return False

    try:
        _wait_for(up, 15, "tutorial app", proc)
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def ws_base(stack: LocalStack, index: int = 0) -> str:
    return f"ws://127.0.0.1:{stack.gateways[index].port}"


def http_base(stack: LocalStack, index: int = 0) -> str:
    return f"http://127.0.0.1:{stack.gateways[index].port}"
