"""Start the HTTP server: check the bind address against the auth settings, load the models, run uvicorn."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from pathlib import Path

from tunelab.serve.adapters import load_registry
from tunelab.serve.errors import ServeError
from tunelab.serve.settings import API_KEY_ENV, ServeSettings, is_loopback

__all__ = ["API_KEY_ENV", "BackgroundServer", "ServeSettings", "bind_port", "build_app", "check_bind", "is_loopback", "parse_adapter", "run_server"]

def parse_adapter(spec: str) -> tuple[str, str]:
    """``NAME=RUN`` → (NAME, RUN); a bare ``RUN`` is named after its folder; ``NAME=alias:ALIAS`` follows an alias.

    Raises:
        ServeError: for an empty name or path.
    """
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, Path(spec.rstrip("/")).name
    name, path = name.strip(), path.strip()
    if not name or not path:
        raise ServeError(f"--adapter '{spec}' is not NAME=RUN_FOLDER", "for example --adapter france=runs/legal-fr")
    return name, path


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to expose an unauthenticated server beyond this machine.

    Raises:
        ServeError: when ``host`` is not loopback, no key is set and ``insecure`` is False.
    """
    if not api_key and not is_loopback(host) and not insecure:
        raise ServeError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could use the models",
            f"set --api-key (or {API_KEY_ENV}), bind to 127.0.0.1, or pass --insecure",
        )


def bind_port(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the slow model load: a port in use is one line at once, not a uvicorn log
    line after the models have loaded.

    Raises:
        ServeError: when ``host``:``port`` cannot be bound (in use, not an address of this machine, no permission).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is reusable
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {error.strerror or error}", "choose another --port, or stop the process using it"
        ) from None
    return sock


def build_app(settings: ServeSettings):
    """Load the models ``settings`` name and return the ASGI app (no socket is opened).

    Raises:
        ServeError, ModelError: for unusable models, adapters, or settings.
    """
    # Imported here, not at the top: the CLI imports this module to register `tunelab serve`, and
    # fastapi/pydantic routing cost ~0.9 s that every other command (train, run, ...) would pay.
    from tunelab.serve.app import create_app

    settings = dataclasses.replace(settings, api_key=settings.api_key or os.environ.get(API_KEY_ENV) or None)
    check_bind(settings.host, settings.api_key, settings.insecure)
    if settings.dtype not in ("float32", "fp32", "bfloat16", "bf16"):
        raise ServeError(f"unknown dtype '{settings.dtype}'", "use float32 or bfloat16")
    registry = load_registry(
        settings.model,
        settings.adapters,
        dtype=settings.dtype,
        max_loaded=settings.max_loaded_adapters,
        allow_network=settings.allow_network,
        served_name=settings.served_name,
        registry_path=settings.registry_path,
    )
    return create_app(registry, settings)


def run_server(settings: ServeSettings) -> None:
    """Serve until interrupted; on SIGINT/SIGTERM in-flight requests finish and the log is flushed.

    Raises:
        ServeError, ModelError: before binding, for unusable settings or models.
    """
    import uvicorn

    api_key = settings.api_key or os.environ.get(API_KEY_ENV) or None
    check_bind(settings.host, api_key, settings.insecure)  # before the slow model load
    sock = bind_port(settings.host, settings.port)
    try:
        app = build_app(settings)
        # timeout_graceful_shutdown=None: on shutdown uvicorn waits for every in-flight request.
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=None)
        # uvicorn names the address only of sockets it binds itself; the URL is what a user copies into a client.
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        logging.getLogger("uvicorn.error").info("tunelab serve: listening on %s (the API under %s/v1; Ctrl+C stops)", url, url)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """A uvicorn server on a thread (tests, benchmarks, notebooks): ``with BackgroundServer(app) as url: ...``.

    Leaving the block asks uvicorn to shut down the way SIGTERM would: in-flight requests finish,
    then the app's shutdown drains the engine and flushes the request log.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, start_timeout: float = 60.0) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=None)
        self.server = uvicorn.Server(self.config)
        self.start_timeout = start_timeout
        self.thread = None
        self.url = ""

    def start(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, name="tunelab-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.02)
        sockets = [s for server in self.server.servers for s in server.sockets]
        port = sockets[0].getsockname()[1] if sockets else self.config.port
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self, timeout: float = 120.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
