"""The stack's monitoring files: the Prometheus config and recording rules pass
`promtool check`, scrape what compose runs where it runs it; Grafana's provisioning
points at the stack's Prometheus and at the folder compose mounts the dashboards in; the
OpenTelemetry collector listens where the gateway sends and its healthcheck asks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import load_config
from tests.deploy.stack import DEPLOY, VARIANTS, resolve, run, tool

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
PROMTOOL_HINT = "`make deploy-tools` installs Debian's prometheus package"


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return resolve(VARIANTS["cpu"])


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def mount_target(service: dict[str, Any], source: Path) -> str:
    [target] = [
        m["target"]
        for m in service["volumes"]
        if m["type"] == "bind" and Path(m["source"]) == source and m.get("read_only")
    ]
    return str(target)


def jobs() -> dict[str, dict[str, Any]]:
    config = read_yaml(PROMETHEUS / "prometheus.yml")
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_promtool_accepts_the_config_and_its_rules(tmp_path: Path) -> None:
    promtool = tool("promtool", PROMTOOL_HINT)
    config = PROMETHEUS / "prometheus.yml"
    syntax = run([promtool, "check", "config", "--syntax-only", str(config)])
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    rules = run([promtool, "check", "rules", str(PROMETHEUS / "rules.yml")])
    assert rules.returncode == 0, rules.stdout + rules.stderr
    # The full check also opens every file the config names; the admin key file exists
    # only inside the container, so this copy names one made here.
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, copy)
    key = tmp_path / "gateway_admin_key"
    key.write_text("key")
    line = "credentials_file: " + jobs()["gateway"]["authorization"]["credentials_file"]
    text = config.read_text()
    assert text.count(line) == 1
    (copy / "prometheus.yml").write_text(text.replace(line, f"credentials_file: {key}"))
    full = run([promtool, "check", "config", str(copy / "prometheus.yml")])
    assert full.returncode == 0, full.stdout + full.stderr
    assert "SUCCESS: 1 rule files found" in full.stdout


def test_prometheus_scrapes_the_gateway_and_the_backends_every_5s(
    stack: dict[str, Any],
) -> None:
    config = read_yaml(PROMETHEUS / "prometheus.yml")
    assert config["global"]["scrape_interval"] == "5s"
    services = stack["services"]
    prometheus = services["prometheus"]
    mounted = mount_target(prometheus, PROMETHEUS)
    assert f"--config.file={mounted}/prometheus.yml" in prometheus["command"]
    gateway = jobs()["gateway"]
    assert gateway.get("metrics_path", "/metrics") == "/metrics"
    assert gateway["static_configs"] == [{"targets": ["gateway:8000"]}]
    # /metrics needs the gateway's admin key: Prometheus reads it from the config compose
    # writes into its container, which holds the key the gateway gets.
    auth = gateway["authorization"]
    assert auth["type"] == "Bearer"
    [handed] = prometheus["configs"]
    assert handed["target"] == auth["credentials_file"]
    environ = services["gateway"]["environment"]
    admin_key = load_config(DEPLOY / "gateway.toml", environ).admin_key(environ)
    assert stack["configs"][handed["source"]]["content"] == admin_key
    backend = jobs()["backend"]
    assert backend.get("metrics_path", "/metrics") == "/metrics"
    assert backend["dns_sd_configs"] == [
        {"names": ["backend"], "type": "A", "port": 8001, "refresh_interval": "5s"}
    ]
    assert services["backend"]["expose"] == ["8001"]


def test_grafana_provisions_the_stacks_prometheus(stack: dict[str, Any]) -> None:
    grafana = stack["services"]["grafana"]
    assert mount_target(grafana, GRAFANA / "provisioning") == "/etc/grafana/provisioning"
    [source] = read_yaml(GRAFANA / "provisioning/datasources/prometheus.yaml")["datasources"]
    assert (source["uid"], source["type"]) == ("prometheus", "prometheus")
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    url = urlsplit(source["url"])
    assert (url.hostname, url.port) == ("prometheus", 9090)
    assert "prometheus" in stack["services"]


def test_grafana_loads_the_dashboards_folder(stack: dict[str, Any]) -> None:
    grafana = stack["services"]["grafana"]
    dashboards = GRAFANA / "dashboards"
    [provider] = read_yaml(GRAFANA / "provisioning/dashboards/llm-gateway.yaml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mount_target(grafana, dashboards)
    assert (dashboards / "README.md").is_file()
    for path in dashboards.glob("*.json"):
        text = path.read_text()
        json.loads(text)
        # Panels name the provisioned data source by its fixed uid.
        assert '"uid": "prometheus"' in text or '"uid":"prometheus"' in text, path


def test_the_collector_listens_where_the_gateway_sends_its_traces(
    stack: dict[str, Any],
) -> None:
    services = stack["services"]
    collector = services["otel-collector"]
    config_path = mount_target(collector, DEPLOY / "otel-collector.yaml")
    assert f"--config={config_path}" in collector["command"]
    config = read_yaml(DEPLOY / "otel-collector.yaml")
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    environ = services["gateway"]["environment"]
    endpoint = load_config(DEPLOY / "gateway.toml", environ).telemetry.otlp_endpoint
    assert endpoint is not None
    sent_to = urlsplit(endpoint)
    assert (sent_to.hostname, str(sent_to.port)) == ("otel-collector", http.split(":")[-1])
    assert http.startswith("0.0.0.0:")  # the collector's default is localhost only
    # Its healthcheck asks the health_check extension.
    health = config["extensions"]["health_check"]["endpoint"]
    assert "health_check" in config["service"]["extensions"]
    assert f"http://127.0.0.1:{health.split(':')[-1]}/" in collector["healthcheck"]["test"]
    # Every component a pipeline names is configured.
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name}: {kind} {component}"
