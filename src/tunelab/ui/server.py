"""Start ``tunelab ui``: refuse an unauthenticated address beyond this machine, then run uvicorn."""

from __future__ import annotations

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
    from tunelab.serve.settings import is_loopback

    if not settings.api_key and not is_loopback(settings.host) and not settings.insecure:
        raise UIError(
            f"refusing to open the UI on {settings.host} without an API key: anyone who can reach it could read your runs and start new ones",
            f"set --api-key (or {API_KEY_ENV}), keep the default 127.0.0.1, or pass --insecure",
        )


def run_ui(settings: UISettings) -> None:
    """Serve the UI until interrupted (Ctrl-C); started runs still going are interrupted on the way out.

    Raises:
        UIError: for an unauthenticated non-loopback address.
        RegistryError: when the registry file cannot be used.
    """
    import uvicorn

    check_ui_bind(settings)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
