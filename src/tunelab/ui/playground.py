"""The playground: a prompt answered by one run, or by two side by side, before deploying either.

Each run is answered by tunelab's serving app itself (``tunelab.serve.create_app`` over
``load_registry(run)``), called in-process through ASGI: the same endpoints, prompt, chat template,
label head and out-of-scope threshold as ``tunelab serve RUN``. A classify run answers through
``/v1/classify`` (label and probabilities), any other through ``/v1/chat/completions`` (the run's own decoding: greedy unless its
``eval.temperature`` says otherwise). The
last two apps stay loaded, so a second prompt answers in the time of one forward pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError

MAX_LOADED = 2
MAX_PROMPT_CHARS = 20_000


class Playground:
    """Loaded serving apps by run folder (at most ``MAX_LOADED``), and the one question the page asks them."""

    def __init__(self, max_loaded: int = MAX_LOADED) -> None:
        self.max_loaded = max_loaded
        self.apps: OrderedDict[str, tuple[Any, str, str | None]] = OrderedDict()
        self.lock = asyncio.Lock()

    async def _app(self, run_dir: Path) -> tuple[Any, str, str | None]:
        from tunelab.serve import create_app
        from tunelab.serve.adapters import load_registry
        from tunelab.serve.settings import ServeSettings

        key = str(run_dir.resolve())
        async with self.lock:
            if key in self.apps:
                self.apps.move_to_end(key)
                return self.apps[key]
            # Loading a model takes seconds: off the event loop, so other pages stay live.
            registry = await asyncio.to_thread(load_registry, str(run_dir))
            name = run_dir.name if registry.get(run_dir.name) is not None else registry.names()[0]
            app = create_app(registry, ServeSettings(log_path=None))
            app.state.engine.start()
            entry = registry.get(name)
            self.apps[key] = (app, name, entry.task if entry else None)
            while len(self.apps) > self.max_loaded:
                _, (old, _, _) = self.apps.popitem(last=False)
                await asyncio.to_thread(old.state.engine.stop)
            return self.apps[key]

    async def answer(self, run_dir: Path, prompt: str, *, max_tokens: int = 128) -> dict[str, Any]:
        """The run's answer to ``prompt`` as ``tunelab serve`` gives it, with the time it took.

        Raises:
            ConfigError: for an empty or too long prompt; the serving app's own 4xx message otherwise.
        """
        import httpx

        if not prompt.strip():
            raise ConfigError("type a prompt first")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"the prompt is longer than {MAX_PROMPT_CHARS:,} characters")
        app, name, task = await self._app(run_dir)
        started = time.perf_counter()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=600) as client:
            if task == "classify":
                response = await client.post("/v1/classify", json={"model": name, "input": prompt})
            else:
                # No decoding given: the server answers with the run's own (eval.temperature, top_p), as it would any client.
                response = await client.post("/v1/chat/completions", json={
                    "model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                })
        body = response.json()
        if response.status_code >= 400:
            raise ConfigError(f"{name}: {(body.get('error') or {}).get('message', response.text)}")
        seconds = time.perf_counter() - started
        if task == "classify":
            item = body["data"][0]
            probabilities = sorted((item.get("probabilities") or {}).items(), key=lambda pair: -pair[1])
            return {"run": name, "task": task, "label": item.get("label"), "probabilities": probabilities[:8],
                    "out_of_scope": item.get("out_of_scope"), "seconds": seconds}
        choice = body["choices"][0]
        return {"run": name, "task": task, "text": choice["message"]["content"], "finish_reason": choice.get("finish_reason"),
                "tokens": (body.get("usage") or {}).get("completion_tokens"), "seconds": seconds}

    def close(self) -> None:
        for app, _, _ in self.apps.values():
            app.state.engine.stop()
        self.apps.clear()
