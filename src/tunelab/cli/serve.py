"""``tunelab serve``: the base model and tuned adapters behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.serve.settings import API_KEY_ENV, DEFAULT_LOG_PATH, DEFAULTS, ServeSettings


def serve(
    model: str = typer.Option(DEFAULTS.model, "--model", "-m", help="Base model (default, folder, .gguf, hub id) or a run folder."),
    adapter: list[str] = typer.Option(
        [], "--adapter", "-a",
        help="NAME=RUN: serve RUN's LoRA adapter as model NAME (repeatable); NAME=alias:ALIAS follows a registry alias.",
    ),
    host: str = typer.Option(DEFAULTS.host, "--host", help="Address to bind; non-loopback needs --api-key or --insecure."),
    port: int = typer.Option(DEFAULTS.port, "--port", "-p", min=0, max=65535),
    api_key: str = typer.Option(None, "--api-key", envvar=API_KEY_ENV, help="Require 'Authorization: Bearer KEY'."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback address without an API key."),
    log_db: Path = typer.Option(DEFAULT_LOG_PATH, "--log-db", help="SQLite request log (WAL)."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log requests."),
    max_loaded_adapters: int = typer.Option(DEFAULTS.max_loaded_adapters, "--max-loaded-adapters", min=1, help="Adapters kept in memory (LRU)."),
    max_batch_size: int = typer.Option(DEFAULTS.max_batch_size, "--max-batch-size", min=1, help="Most requests computed together."),
    batch_window_ms: float = typer.Option(DEFAULTS.batch_window_ms, "--batch-window-ms", min=0.0, help="How long to gather a batch."),
    max_waiting: int = typer.Option(
        DEFAULTS.max_waiting_requests, "--max-waiting", min=1, help="Requests waiting to be computed beyond which a new one gets 429 (Retry-After)."
    ),
    max_tokens: int = typer.Option(DEFAULTS.max_tokens_limit, "--max-tokens", min=1, help="Longest answer a request may ask for."),
    max_body_bytes: int = typer.Option(DEFAULTS.max_body_bytes, "--max-body-bytes", min=1024, help="Largest request body."),
    dtype: str = typer.Option(DEFAULTS.dtype, "--dtype", help="float32 or bfloat16."),
    served_name: str = typer.Option(None, "--served-name", help="Name of the base model in the API (default: its name)."),
    allow_network: bool = typer.Option(False, "--allow-network", help="Allow downloading a hub model."),
    registry_path: Path = typer.Option(None, "--registry", help="Registry that alias:ALIAS adapters follow (default: runs/registry.db)."),
    alias_poll_s: float = typer.Option(DEFAULTS.alias_poll_s, "--alias-poll-s", min=0.1, help="How often followed aliases are checked."),
) -> None:
    """Serve models over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/classify)."""
    from tunelab.serve.server import parse_adapter, run_server  # imports torch: only for this command

    settings = ServeSettings(
        model=model,
        adapters=[parse_adapter(spec) for spec in adapter],
        host=host,
        port=port,
        api_key=api_key,
        insecure=insecure,
        log_path=None if no_log else log_db,
        dtype=dtype,
        max_loaded_adapters=max_loaded_adapters,
        max_batch_size=max_batch_size,
        batch_window_ms=batch_window_ms,
        max_waiting_requests=max_waiting,
        max_tokens_limit=max_tokens,
        max_body_bytes=max_body_bytes,
        served_name=served_name,
        allow_network=allow_network,
        registry_path=registry_path,
        alias_poll_s=alias_poll_s,
    )
    run_server(settings)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
