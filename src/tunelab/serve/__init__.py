"""OpenAI-compatible HTTP serving of a base model and its LoRA adapters (``tunelab serve``)."""

from tunelab.serve.adapters import ModelRegistry, ServedModel, load_registry
from tunelab.serve.app import ServeSettings, create_app
from tunelab.serve.engine import Engine, SamplingParams
from tunelab.serve.errors import APIError, ServeError
from tunelab.serve.request_log import RequestLog, read_requests
from tunelab.serve.server import BackgroundServer, ServeOptions, build_app, run_server

__all__ = [
    "APIError",
    "BackgroundServer",
    "Engine",
    "ModelRegistry",
    "RequestLog",
    "SamplingParams",
    "ServeError",
    "ServeOptions",
    "ServeSettings",
    "ServedModel",
    "build_app",
    "create_app",
    "load_registry",
    "read_requests",
    "run_server",
]
