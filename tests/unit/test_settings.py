"""Settings fail fast: a bad value, and a variable under a process's prefix that names no
setting (a typo would otherwise leave the default in place, silently)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.files import FilesSettings
from gateway.settings import GatewaySettings
from services.chat.settings import ChatSettings
from services.codec.settings import CodecSettings
from wire.settings import unknown_variables

ROOT = Path(__file__).resolve().parents[2]


def test_a_misspelt_variable_is_refused_with_a_guess(monkeypatch) -> None:
    monkeypatch.setenv("SB_GATEWAY_REQUEST_TIMOUT", "5")
    with pytest.raises(ValidationError) as exc:
        GatewaySettings()
    assert "SB_GATEWAY_REQUEST_TIMOUT is not a setting" in str(exc.value)
    assert "did you mean SB_GATEWAY_REQUEST_TIMEOUT?" in str(exc.value)


def test_shared_variables_are_checked_too(monkeypatch) -> None:
    monkeypatch.setenv("SB_NATS_ULR", "nats://elsewhere:4222")
    with pytest.raises(ValidationError, match="SB_NATS_ULR is not a setting"):
        CodecSettings()


def test_each_process_checks_its_own_prefix_only(monkeypatch) -> None:
    # one environment for every process (compose's .env, localstack's env)
    monkeypatch.setenv("SB_CODEC_CONCURRENCY", "2")
    monkeypatch.setenv("SB_CHAT_PRESENCE_TTL", "3")
    monkeypatch.setenv("SB_GATEWAY_FILES_UPLOAD_WINDOW", "4")  # FilesSettings, not Gateway's
    monkeypatch.setenv("SB_TOKEN", "for the command-line client")
    assert GatewaySettings().request_timeout == 2.0
    assert FilesSettings().upload_window == 4
    assert CodecSettings().concurrency == 2
    assert ChatSettings().presence_ttl == 3.0


def test_nested_prefix_is_checked_by_its_own_class(monkeypatch) -> None:
    monkeypatch.setenv("SB_GATEWAY_FILES_UPLOAD_WINDOWS", "4")
    GatewaySettings()  # not its prefix's business
    with pytest.raises(ValidationError, match="did you mean SB_GATEWAY_FILES_UPLOAD_WINDOW"):
        FilesSettings()


def test_names_are_compared_as_pydantic_reads_them() -> None:
    # pydantic-settings reads variables case-insensitively: so does the check
    env = {"sb_codec_concurrency": "2", "Sb_Codec_Concurency": "2", "SB_CODECS": "x"}
    assert unknown_variables(CodecSettings, env) == [
        "Sb_Codec_Concurency is not a setting (did you mean SB_CODEC_CONCURRENCY?)"
    ]


def test_a_worker_with_a_misspelt_variable_does_not_start() -> None:
    env = {
        "SB_CODEC_CONCURENCY": "8",
        "SB_NATS_URL": "nats://127.0.0.1:1",  # should it start after all: nothing there
        "SB_CODEC_METRICS_PORT": "0",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "services.codec"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert proc.returncode != 0
    assert "SB_CODEC_CONCURENCY is not a setting (did you mean SB_CODEC_CONCURRENCY?)" in (
        proc.stderr
    )


def test_the_cap_on_replies_owed_is_not_under_the_send_queue_bound(monkeypatch) -> None:
    monkeypatch.setenv("SB_GATEWAY_SEND_QUEUE_BYTES", str(64 << 20))
    with pytest.raises(ValidationError, match="SB_GATEWAY_SEND_QUEUE_MAX_BYTES must be at least"):
        GatewaySettings()
    monkeypatch.setenv("SB_GATEWAY_SEND_QUEUE_MAX_BYTES", str(128 << 20))
    assert GatewaySettings().send_queue_max_bytes == 128 << 20
