"""Start the HTTP server: check the bind address against the auth settings, load the models, run uvicorn."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.serve.adapters import load_registry
from tunelab.serve.errors import ServeError

API_KEY_ENV = "TUNELAB_API_KEY"
DEFAULT_LOG_PATH = Path("runs") / "requests.db"


@dataclass
class ServeOptions:
    """Everything ``tunelab serve`` can be told."""

    model: str = "default"
    adapters: list[tuple[str, str]] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False
    log_path: Path | None = DEFAULT_LOG_PATH
    dtype: str = "float32"
    max_loaded_adapters: int = 4
    max_batch_size: int = 8
    batch_window_ms: float = 10.0
    max_tokens_limit: int = 512
    max_body_bytes: int = 1_000_000
    served_name: str | None = None
    allow_network: bool = False


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_adapter(spec: str) -> tuple[str, str]:
    """``NAME=RUN`` → (NAME, RUN); a bare ``RUN`` is named after its folder.

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


def build_app(options: ServeOptions):
    """Load the models of ``options`` and return the ASGI app (no socket is opened).

    Raises:
        ServeError, ModelError: for unusable models, adapters, or settings.
    """
    # Imported here, not at the top: the CLI imports this module to register `tunelab serve`, and
    # fastapi/pydantic routing cost ~0.9 s that every other command (train, run, ...) would pay.
    from tunelab.serve.app import ServeSettings, create_app

    api_key = options.api_key or os.environ.get(API_KEY_ENV) or None
    check_bind(options.host, api_key, options.insecure)
    if options.dtype not in ("float32", "fp32", "bfloat16", "bf16"):
        raise ServeError(f"unknown dtype '{options.dtype}'", "use float32 or bfloat16")
    registry = load_registry(
        options.model,
        options.adapters,
        dtype=options.dtype,
        max_loaded=options.max_loaded_adapters,
        allow_network=options.allow_network,
        served_name=options.served_name,
    )
    settings = ServeSettings(
        api_key=api_key,
        max_tokens_limit=options.max_tokens_limit,
        max_body_bytes=options.max_body_bytes,
        max_batch_size=options.max_batch_size,
        batch_window_ms=options.batch_window_ms,
        log_path=options.log_path,
    )
    return create_app(registry, settings)


def run_server(options: ServeOptions) -> None:
    """Serve until interrupted; on SIGINT/SIGTERM in-flight requests finish and the log is flushed.

    Raises:
        ServeError, ModelError: before binding, for unusable settings or models.
    """
    import uvicorn

    api_key = options.api_key or os.environ.get(API_KEY_ENV) or None
    check_bind(options.host, api_key, options.insecure)  # before the slow model load
    app = build_app(options)
    # timeout_graceful_shutdown=None: on shutdown uvicorn waits for every in-flight request.
    uvicorn.run(app, host=options.host, port=options.port, log_level="info", timeout_graceful_shutdown=None)


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
