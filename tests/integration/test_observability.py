"""Observability against a running stack (debug logs on):

- one frame's trace id in the gateway's and the worker's log line of every hop;
- a real Prometheus (Debian ``prometheus``) scraping the stack and the local NATS
  exporter: every PromQL expression of every Grafana panel and template variable, and
  every recording rule, parses and returns at least one series; every alert parses;
- the live dashboard page in headless Chromium: its charts update while a load runs.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
import yaml

from switchboard import prometheus as prom
from switchboard.localstack import ROOT, LocalStack, running
from tests.integration.browser import chromium, wait_until
from tests.integration.client import connect, recv, recv_for

GRAFANA = ROOT / "infra" / "grafana" / "dashboards"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running(tmp_path_factory.mktemp("obs"), env={"SB_LOG_LEVEL": "debug"}) as s:
        yield s


def ws_base(stack: LocalStack) -> str:
    return f"ws://127.0.0.1:{stack.gateways[0].port}"


async def drive_every_endpoint(base: str, user: str = "observer") -> None:
    """One round through every tutorial endpoint, good and bad frames."""
    async with connect(base + "/ws") as ws:
        await ws.send("hello")
        assert await recv(ws) == "Echo: hello"
        await ws.send(b"\x00")  # wrong frame type: an error frame
        assert await recv(ws) == "Error: expected a text frame"
    async with connect(base + "/ws/json") as ws:
        await ws.send('{"a": 1}')
        assert "1 fields" in await recv(ws)
        await ws.send("not json")
        assert await recv(ws) == "Error: Invalid JSON format"
    async with connect(base + "/ws/binary") as ws:
        await ws.send(b"12345")
        assert str(await recv(ws)).startswith("Received binary data of size 5")
        assert await recv(ws) == b"12345"
    async with connect(base + "/ws/mixed") as ws:
        await ws.send("text")
        assert await recv(ws) == "You sent a text message: text"
        await ws.send(b"abc")
        assert await recv(ws) == "You sent a binary message of size 3 bytes"
    async with connect(base + "/ws/compressed") as ws:
        await ws.send(zlib.compress(b"squeeze me"))
        assert json.loads(await recv(ws))["status"] == "success"
        await ws.send(b"not zlib")
        assert json.loads(await recv(ws))["status"] == "error"
    async with connect(f"{base}/ws/chat?username={user}") as ws:
        await recv_for(ws, user)  # own join notice
        await ws.send(json.dumps({"message": "hi"}))
        assert (await recv_for(ws, user))["message"] == f"{user}: hi"
        # an error answered to the sender only; replies come in order, so once it is
        # here the (empty) reply to "hi" has reached the gateway too
        await ws.send("not json")
        assert (await recv_for(ws, user))["type"] == "error"


# -- trace ids ------------------------------------------------------------------------


def log_lines(path: Path, offset: int) -> list[dict]:
    with path.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for line in lines:
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


ENDPOINTS = {  # endpoint -> worker; the last frame sent to each gets a reply with frames
    "/ws": "codec",
    "/ws/json": "codec",
    "/ws/binary": "binary",
    "/ws/mixed": "binary",
    "/ws/compressed": "codec",
    "/ws/chat": "chat",  # an error frame (a chat message's own reply is empty)
}


async def test_one_trace_id_per_frame_in_every_process_and_hop(stack) -> None:
    procs = {p.name: p for p in stack.processes}
    offsets = {name: p.log_path.stat().st_size for name, p in procs.items()}
    await drive_every_endpoint(ws_base(stack), user="tracer")

    def lines(name: str) -> list[dict]:
        return log_lines(procs[name].log_path, offsets[name])

    deadline = time.monotonic() + 5
    while True:
        gateway = lines("gateway")
        published = {
            line["endpoint"]: line["trace_id"]
            for line in gateway
            if line.get("message") == "frame published"
        }
        missing = []
        for endpoint, worker in ENDPOINTS.items():
            trace = published.get(endpoint)
            if trace is None:
                missing.append((endpoint, "frame published"))
                continue
            assert re.fullmatch(r"[0-9a-f]{32}", trace)
            on_gateway = [
                (line["message"], line.get("hop"))
                for line in gateway
                if line.get("trace_id") == trace
            ]
            want = [
                ("frame published", "receive"),
                ("reply received", "return"),
                ("reply sent", "send"),
            ]
            on_worker = [
                (line["message"], line.get("hop"), line["component"])
                for line in lines(worker)
                if line.get("trace_id") == trace
            ]
            want_worker = [
                ("request received", "transit", worker),
                ("request handled", "handling", worker),
            ]
            for item in want:
                if item not in on_gateway:
                    missing.append((endpoint, item))
            for item in want_worker:
                if item not in on_worker:
                    missing.append((endpoint, item))
        if not missing:
            break
        assert time.monotonic() < deadline, missing
        await asyncio.sleep(0.1)
    # distinct frames, distinct trace ids
    assert len(set(published.values())) == len(published)


# -- Prometheus -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory) -> Iterator[int]:
    if prom.binary() is None:
        pytest.fail("prometheus not found: apt-get install prometheus (make setup does it)")
    exporter = prom.start_exporter(stack)
    jobs = {"gateway": [f"127.0.0.1:{g.port}" for g in stack.gateways]}
    for name in ("codec", "binary", "chat"):
        jobs[name] = [f"127.0.0.1:{p.metrics_port}" for p in stack.replicas(name)]
    jobs["nats"] = [f"127.0.0.1:{exporter.port}"]
    config = prom.render_config(jobs, interval="1s", rules=prom.rule_files())
    proc = prom.start(config, tmp_path_factory.mktemp("prometheus"))
    try:
        yield proc.port
    finally:
        proc.stop()
        exporter.stop()


GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "5m",
}


def substitute(expr: str, variables: set[str]) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)

    def var(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in variables, f"undeclared variable ${name} in {expr}"
        return ".*"  # "All": every variable is matched with =~

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel target and template variable."""
    out = []
    for path in sorted(GRAFANA.glob("*.json")):
        board = json.loads(path.read_text())
        variables = {v["name"] for v in board["templating"]["list"]}
        panels = list(board["panels"])
        while panels:
            panel = panels.pop(0)
            panels.extend(panel.get("panels", []))  # collapsed rows
            for target in panel.get("targets", []):
                where = f"{path.name}: {panel['title']} ({target['refId']})"
                out.append((where, substitute(target["expr"], variables)))
        for var in board["templating"]["list"]:
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"{path.name}: variable {var['name']}", substitute(query, variables)))
    return out


def rules(kind: str) -> list[tuple[str, str]]:
    out = []
    for path in prom.rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if kind in rule:
                    out.append((f"{path.name}: {rule[kind]}", rule["expr"]))
    return out


def label_values(port: int, label: str) -> list[str]:
    url = f"http://127.0.0.1:{port}/api/v1/label/{urllib.parse.quote(label)}/values"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)["data"]


def evaluate(port: int, expr: str) -> tuple[str | None, int]:
    """(error or None, number of series) for a PromQL expression or a Grafana
    ``label_values(...)`` variable query."""
    match = re.fullmatch(r"\s*label_values\((.*)\)\s*", expr, re.S)
    if match:
        selector, _, label = match.group(1).rpartition(",")
        label = label.strip()
        if not selector.strip():
            return None, len(label_values(port, label))
        expr = f"count by ({label}) ({selector})"
    answer = prom.query(port, expr)
    if answer.get("status") != "success":
        return f"{answer.get('errorType')}: {answer.get('error')}", 0
    return None, len(answer["data"]["result"])


async def test_every_dashboard_and_rule_expression_returns_series(stack, prometheus) -> None:
    port = prometheus
    prom.wait_for_series(port, "count(up == 1) >= 5")  # every target scraped once
    base = ws_base(stack)
    end = time.monotonic() + 3  # traffic across several 1 s scrapes, so rates are > 0
    round_ = 0
    while time.monotonic() < end:
        await drive_every_endpoint(base, user=f"prom{round_}")
        round_ += 1
    prom.wait_for_series(port, "sum(rate(switchboard_gateway_frames_total[1m]))")
    prom.wait_for_series(port, "sum(rate(switchboard_service_requests_total[1m]))")
    prom.wait_for_series(port, "sum(rate(gnatsd_varz_in_msgs[1m]))")
    prom.wait_for_series(port, "min(switchboard_gateway_service_instances)")

    checked = dashboard_queries() + rules("record")
    assert len(checked) > 40
    failures = []
    for where, expr in checked:
        error, series = evaluate(port, expr)
        if error or series == 0:
            failures.append(f"{where}: {error or 'no series'}\n    {expr}")
    for where, expr in rules("alert"):  # alerts: must parse (most are quiet, rightly)
        error, _ = evaluate(port, expr)
        if error:
            failures.append(f"{where}: {error}\n    {expr}")
    assert not failures, "\n".join(failures)


# -- the live dashboard page ----------------------------------------------------------


async def load(base: str, seconds: float, connections: int = 4) -> int:
    """Closed-loop echo traffic on /ws; returns the number of round trips."""
    done = 0
    end = time.monotonic() + seconds

    async def one(i: int) -> None:
        nonlocal done
        async with connect(base + "/ws") as ws:
            while time.monotonic() < end:
                await ws.send(f"load {i}")
                await recv(ws)
                done += 1

    await asyncio.gather(*(one(i) for i in range(connections)))
    return done


@pytest.mark.browser
async def test_live_dashboard_page_charts_update_under_load(stack) -> None:
    http = f"http://127.0.0.1:{stack.gateways[0].port}"
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(http + "/dashboard")
        await wait_until(page, "window.sbDashboard.updates >= 1", 10)
        idle = await page.evaluate("document.getElementById('c-frames').toDataURL()")
        traffic = asyncio.create_task(load(ws_base(stack), seconds=6))
        try:
            await wait_until(page, "(window.sbDashboard.charts.frames.latest('/ws') || 0) > 5", 10)
            await wait_until(page, "window.sbDashboard.charts.hops.latest('total') > 0", 10)
            await wait_until(page, "window.sbDashboard.charts.connections.latest('/ws') >= 4", 10)
            busy = await page.evaluate("document.getElementById('c-frames').toDataURL()")
            assert busy != idle, "the frames chart did not redraw"
            updates = await page.evaluate("window.sbDashboard.updates")
            await wait_until(page, f"window.sbDashboard.updates >= {updates + 2}", 5)
            legend = await page.inner_text("#l-frames")
            assert "/ws" in legend
            instances = await page.evaluate("window.sbDashboard.last.instances")
            assert instances == {"codec": 1, "binary": 1, "chat": 1, "gateway": 1}
            status = await page.inner_text("#status")
            assert status == "live"
        finally:
            assert await traffic > 0


async def test_dashboard_socket_streams_figures_once_a_second(stack) -> None:
    async with websockets.connect(ws_base(stack) + "/ws/dashboard", open_timeout=5) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 3))
        second = json.loads(await asyncio.wait_for(ws.recv(), 3))
    assert 0.5 < second["at"] - first["at"] < 2.0
    assert set(first) >= {
        "frames_per_second",
        "p99_seconds",
        "connections",
        "instances",
        "ready",
    }
    assert set(first["p99_seconds"]) == {
        "receive",
        "transit",
        "handling",
        "return",
        "send",
        "total",
    }
