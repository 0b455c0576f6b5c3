"""The playground asks a run as any client of `tunelab serve` would: the run's own decoding, not a forced greedy one."""

from __future__ import annotations

import asyncio

import yaml
from tests.unit.serve.conftest import write_fake_run

from tunelab.serve.engine import Engine
from tunelab.ui.playground import Playground


def test_the_playground_answers_with_the_runs_own_decoding(monkeypatch, tmp_path, tiny_model_dir, tiny_tokenizer):
    # It sent temperature 0 whatever the run: a run judged on sampled answers (eval.temperature 0.7) was shown greedy ones.
    seen = []
    real = Engine.submit

    def spy(self, model, kind, prompt_ids, params=None):
        seen.append((params.temperature, params.top_p))
        return real(self, model, kind, prompt_ids, params)

    monkeypatch.setattr(Engine, "submit", spy)
    run = write_fake_run(tmp_path / "warm", tiny_model_dir, tiny_tokenizer, seed=2)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"] = {"temperature": 0.7, "top_p": 0.9}
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    async def ask():
        playground = Playground()
        try:
            return await playground.answer(run, "How many days?", max_tokens=2)
        finally:
            for app, _, _ in playground.apps.values():
                await asyncio.to_thread(app.state.engine.stop)

    answer = asyncio.run(ask())
    assert answer["run"] == "warm" and seen == [(0.7, 0.9)]
