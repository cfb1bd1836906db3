"""`opensandbox-emulator` / `python -m opensandbox_emulator`: read the config, bind both
listeners, serve."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

from opensandbox_emulator.server.config import Config, ConfigError, load, validate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="opensandbox-emulator",
        description="A local OpenSandbox server: the Lifecycle API and an embedded execd.")
    parser.add_argument("--config", help="TOML config file (default: $SANDBOX_CONFIG_PATH)")
    parser.add_argument("--host", help="address to listen on (server.host)")
    parser.add_argument("--port", type=int, help="lifecycle API port (server.port)")
    parser.add_argument("--gateway-port", type=int, help="sandbox gateway port (gateway.port)")
    parser.add_argument("--runtime", choices=["fake", "docker"], help="runtime.type")
    parser.add_argument("--api-key", help="require this OPEN-SANDBOX-API-KEY (server.api_key)")
    parser.add_argument("--log-level", help="server.log_level")
    parser.add_argument("--control", action="store_true",
                        help="serve the control API for tests at /_emulator/ (control.enabled)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    overrides = {"host": args.host, "port": args.port, "api_key": args.api_key,
                 "log_level": args.log_level}
    server = {k: v for k, v in overrides.items() if v is not None}
    if server:
        config = config.replace("server", **server)
    if args.runtime:
        config = config.replace("runtime", type=args.runtime)
    if args.gateway_port is not None:
        config = config.replace("gateway", port=args.gateway_port)
    if args.control:
        config = config.replace("control", enabled=True)
    validate(config)
    return config


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP, and with Nagle on every small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    try:
        config = build_config(parse_args(argv))
    except ConfigError as error:
        print(f"opensandbox-emulator: configuration error: {error}", file=sys.stderr)
        return 2
    level = config.server.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        lifecycle_socket = bind(config.server.host, config.server.port)
        gateway_socket = bind(config.server.host, config.gateway.port)
    except OSError as error:
        print(f"opensandbox-emulator: cannot listen: {error}", file=sys.stderr)
        return 1
    # With port 0 the kernel picks; the app must hand out the ports really bound.
    config = config.replace("server", port=lifecycle_socket.getsockname()[1])
    config = config.replace("gateway", port=gateway_socket.getsockname()[1])
    print("opensandbox-emulator: effective configuration\n" + config.describe(), flush=True)
    # Imported only now, so that a bad config or flag is reported without first loading
    # the whole web stack (about a second).
    import uvicorn

    from opensandbox_emulator.server.app import create_app

    if config.runtime.type == "fake":
        from opensandbox_emulator.runtimes.fake.launch import become_subreaper

        become_subreaper()  # this process is the server: it reaps its sandboxes' inits
    app = create_app(config)
    print(f"opensandbox-emulator: lifecycle API on http://{config.server.host}:"
          f"{config.server.port} (runtime: {config.runtime.type}); sandbox gateway on port "
          f"{config.gateway.port}", flush=True)
    # proxy_headers=False: uvicorn would otherwise replace the peer address with a loopback
    # client's X-Forwarded-For, and the sandbox proxy could no longer append the real peer.
    server = uvicorn.Server(uvicorn.Config(app, log_level=level.lower(), lifespan="on",
                                           access_log=level == "DEBUG", proxy_headers=False,
                                           timeout_graceful_shutdown=5))
    asyncio.run(server.serve(sockets=[lifecycle_socket, gateway_socket]))
    return 0
