"""Prometheus configuration, rules and Grafana dashboards, checked offline.

promtool (Debian package ``prometheus``, installed by ``make setup``) checks the rule
files and the local config and runs the rule unit tests in infra/prometheus/tests/.
The dashboards must be what infra/grafana/build_dashboards.py writes, and every panel
must name the provisioned datasource by its uid."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from switchboard import prometheus as prom

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "infra" / "prometheus"
GRAFANA = ROOT / "infra" / "grafana"
UID = "switchboard-prometheus"


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: apt-get install prometheus (make setup does it)")
    result = subprocess.run(
        [exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_check_rules() -> None:
    files = sorted(str(p) for p in (PROMETHEUS / "rules").glob("*.yml"))
    assert len(files) >= 2
    promtool("check", "rules", *files)


def test_promtool_test_rules() -> None:
    tests = sorted(str(p) for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    out = promtool("test", "rules", *tests)
    assert "FAILED" not in out


def test_promtool_check_local_config(tmp_path: Path) -> None:
    promtool("check", "config", str(PROMETHEUS / "prometheus-local.yml"))
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(prom.local_config(9000))  # what `make run PORT=9000` starts
    assert "127.0.0.1:9000" in rendered.read_text()
    promtool("check", "config", str(rendered))


def test_required_alerts_exist() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "rules" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert {
        "SwitchboardServiceNoInstances",
        "SwitchboardNoResponders",
        "SwitchboardTimeouts",
        "SwitchboardGatewayHopSlow",
        "SwitchboardWorkerHopSlow",
        "SwitchboardErrorRatioHigh",
        "SwitchboardConnectionsDropping",
        "SwitchboardSlowConsumerDrops",
        "SwitchboardWorkerSaturated",
        "NatsSlowConsumers",
    } <= alerts


def _build_module():
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboards_are_generated_and_committed() -> None:
    for name, text in _build_module().render().items():
        path = GRAFANA / "dashboards" / name
        assert path.exists(), f"{path} missing: run infra/grafana/build_dashboards.py"
        assert path.read_text() == text, f"{path} is stale: run infra/grafana/build_dashboards.py"


def test_every_panel_uses_the_provisioned_datasource_uid() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "datasource.yml").read_text()
    )
    assert [d["uid"] for d in provisioned["datasources"]] == [UID]
    titles = set()
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        titles.add(board["title"])
        assert board["panels"], path
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": UID}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == UID, panel["title"]
                assert "rate(" not in target["expr"] or "$__rate_interval" in target["expr"]
        for var in board["templating"]["list"]:
            assert var["datasource"]["uid"] == UID
    assert {
        "Switchboard / Overview",
        "Switchboard / Service RED",
        "Switchboard / Hop latency",
        "Switchboard / NATS server",
    } <= titles
