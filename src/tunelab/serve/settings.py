"""Everything one ``tunelab serve`` server can be told, declared once (the CLI's options read their defaults here).

Light on purpose (no fastapi): the CLI imports it to register ``tunelab serve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.runtime import is_loopback

API_KEY_ENV = "TUNELAB_API_KEY"
DEFAULT_LOG_PATH = Path("runs") / "requests.db"

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def host_name(host_header: str) -> str:
    """The name part of a Host header: ``127.0.0.1:7860`` -> ``127.0.0.1``, ``[::1]:7860`` -> ``[::1]``."""
    if host_header.startswith("["):
        return host_header[: host_header.find("]") + 1].lower()
    return host_header.rsplit(":", 1)[0].lower()


def host_allowed(host_header: str, bound_host: str) -> bool:
    """The Host guard of a server bound to ``bound_host`` (``tunelab serve`` and ``tunelab ui``).

    Bound to loopback, a request must name this machine (or the bound address): a page that has
    rebound its own DNS name to 127.0.0.1 sends its own name and is refused, so it cannot use the
    models, read answers or write feedback through the user's browser. Bound beyond loopback (with a
    key, or --insecure), any name that reaches the server is the user's choice.
    """
    name = host_name(host_header)
    if name in LOOPBACK_NAMES or name == bound_host.lower():
        return True
    return not is_loopback(bound_host)


@dataclass
class ServeSettings:
    """The models to load, where to listen, and the limits and switches of the app."""

    model: str = "default"
    adapters: list[tuple[str, str]] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False
    # None: no request log. `tunelab serve` logs to DEFAULT_LOG_PATH unless --no-log.
    log_path: Path | None = None
    dtype: str = "float32"
    max_loaded_adapters: int = 4
    max_batch_size: int = 8
    # Requests waiting for the engine (not yet computing) beyond which a new one is answered 429 with Retry-After: an
    # unbounded queue made every client wait longer under a burst, until its own timeout gave up on an answer computed
    # for nobody; OpenAI's clients back off and ask again on a 429.
    max_waiting_requests: int = 256
    batch_window_ms: float = 10.0
    max_tokens_limit: int = 512
    max_body_bytes: int = 1_000_000
    served_name: str | None = None
    allow_network: bool = False
    # Where --adapter NAME=alias:ALIAS looks its alias up (None: runs/registry.db), and how often.
    registry_path: Path | None = None
    alias_poll_s: float = 2.0


DEFAULTS = ServeSettings()
