"""Start ``tunelab ui``: refuse an unauthenticated address beyond this machine, then run uvicorn."""

from __future__ import annotations

from collections.abc import Callable

from tunelab.errors import TunelabError
from tunelab.ui.app import UISettings, create_app

API_KEY_ENV = "TUNELAB_UI_API_KEY"


class UIError(TunelabError):
    """An address or setting the UI cannot be started with."""


def check_ui_bind(settings: UISettings) -> None:
    """The UI starts training runs and shows every run's data: beyond loopback it needs a key.

    Raises:
        UIError: when the host is not loopback, no key is set and ``insecure`` is False.
    """
    from tunelab.runtime import is_loopback

    if not settings.api_key and not is_loopback(settings.host) and not settings.insecure:
        raise UIError(
            f"refusing to open the UI on {settings.host} without an API key: anyone who can reach it could read your runs and start new ones",
            f"set --api-key (or {API_KEY_ENV}), keep the default 127.0.0.1, or pass --insecure",
        )


def run_ui(settings: UISettings, announce: Callable[[str], None] | None = None) -> None:
    """Serve the UI until interrupted (Ctrl-C); started runs still going are interrupted on the way out.

    The port is bound first: a port in use (7860 is also Gradio's default) is one line, and ``announce`` gets the
    address (the real port, for ``--port 0``) only once it is this UI's.

    Raises:
        UIError: for an unauthenticated non-loopback address.
        ServeError: when the address cannot be bound (in use, not this machine's).
        RegistryError: when the registry file cannot be used.
    """
    import uvicorn

    from tunelab.serve.server import bind_port

    check_ui_bind(settings)
    sock = bind_port(settings.host, settings.port)
    try:
        app = create_app(settings)
        host, port = sock.getsockname()[:2]
        if announce is not None:
            announce(f"http://{f'[{host}]' if ':' in host else host}:{port}/")
        uvicorn.Server(uvicorn.Config(app, host=settings.host, port=port, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()
