"""Prometheus for the local stack: ``make run`` (via :func:`start_local`) and the tests.

``make run`` starts Prometheus when a ``prometheus`` binary is on PATH (Debian package
``prometheus``), with ``infra/prometheus/prometheus-local.yml`` — the gateway's port put
in, the rule files made absolute — scraping the local processes, plus the local NATS
exporter (:mod:`switchboard.natsexporter`). Without the binary it says so and the stack
runs without it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from switchboard.localstack import ROOT, LocalStack, Process, _wait_for, free_port, port_free

INFRA = ROOT / "infra" / "prometheus"
LOCAL_CONFIG = INFRA / "prometheus-local.yml"
RULES = INFRA / "rules"
DEFAULT_PORT = 9090
LOCAL_GATEWAY = "127.0.0.1:8000"  # the gateway target written in prometheus-local.yml


def binary() -> str | None:
    return shutil.which("prometheus")


def rule_files() -> list[Path]:
    return sorted(RULES.glob("*.yml"))


def render_config(
    jobs: Mapping[str, Sequence[str]], interval: str = "1s", rules: Sequence[Path] = ()
) -> str:
    """A Prometheus config scraping ``jobs`` (job name -> ``host:port`` targets).

    JSON is YAML, so no YAML library is needed."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rules],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs.items()
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def local_config(gateway_port: int) -> str:
    """``prometheus-local.yml`` with the gateway's actual port and absolute rule paths."""
    text = LOCAL_CONFIG.read_text()
    text = text.replace(LOCAL_GATEWAY, f"127.0.0.1:{gateway_port}")
    return text.replace("- rules/", f"- {RULES}/")


def start_exporter(stack: LocalStack, port: int = 0, timeout: float = 15.0) -> Process:
    """The local NATS exporter for the stack's nats-server monitoring port."""
    port = port or free_port()
    argv = [
        sys.executable, "-m", "switchboard.natsexporter",
        "--url", f"http://127.0.0.1:{stack.nats_monitor_port}",
        "--port", str(port),
    ]  # fmt: skip
    log = stack.var_dir / "logs" / "nats-exporter.log"
    proc = Process("nats-exporter", argv, stack._env(), log)
    proc.port = proc.metrics_port = port
    proc.start()
    _wait_for(lambda: "nats exporter on" in proc.log(), timeout, "nats exporter", proc.popen)
    return proc


def start(
    config: str, var_dir: Path, port: int = 0, timeout: float = 30.0, name: str = "prometheus"
) -> Process:
    """Start ``prometheus`` with ``config`` (text) on ``127.0.0.1:port``; data and log
    under ``var_dir``. Waits until it answers ``/-/ready``."""
    exe = binary()
    if exe is None:
        raise RuntimeError("prometheus not found: apt-get install prometheus")
    port = port or free_port()
    var_dir.mkdir(parents=True, exist_ok=True)
    config_path = var_dir / "prometheus.yml"
    config_path.write_text(config)
    argv = [
        exe,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={var_dir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    proc = Process(name, argv, dict(os.environ), var_dir / "prometheus.log")
    proc.port = port
    proc.start()
    _wait_for(lambda: ready(port), timeout, "prometheus", proc.popen)
    return proc


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def query(port: int, expr: str, at: float | None = None) -> dict[str, Any]:
    """``/api/v1/query``: the decoded JSON answer (errors included, never raises on 4xx)."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def start_local(stack: LocalStack, gateway_port: int, var_dir: Path) -> list[Process]:
    """For ``make run``: the NATS exporter and Prometheus, if a ``prometheus`` binary is
    on PATH; says what it did. Returns the processes to stop at the end."""
    if binary() is None:
        print("prometheus    not started: no `prometheus` on PATH (Debian package prometheus)")
        return []
    port = int(os.environ.get("PROMETHEUS_PORT", DEFAULT_PORT))
    if not port_free(port) or not port_free(7777):
        print(f"prometheus    not started: port {port} or 7777 is in use")
        return []
    started: list[Process] = []
    try:
        started.append(start_exporter(stack, 7777))
        started.append(start(local_config(gateway_port), var_dir / "prometheus", port))
    except (RuntimeError, TimeoutError) as exc:
        print(f"prometheus    not started: {exc}")
        for proc in started:
            proc.stop()
        return []
    print(
        f"prometheus    http://127.0.0.1:{port}  (infra/prometheus/prometheus-local.yml, "
        f"rules from infra/prometheus/rules; NATS via the local exporter :7777)"
    )
    return started


def wait_for_series(port: int, expr: str, timeout: float = 30.0) -> None:
    """Until ``expr`` returns at least one sample with a value > 0."""

    def has() -> bool:
        answer = query(port, expr)
        results = answer.get("data", {}).get("result", [])
        return any(float(r["value"][1]) > 0 for r in results)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if has():
            return
        time.sleep(0.25)
    raise TimeoutError(f"no series > 0 for {expr} after {timeout}s")
