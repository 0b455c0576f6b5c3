"""The log-probabilities ``tunelab serve`` reports are the model's own distribution (the log-softmax of its logits), also
for a model whose ``generation_config.json`` sets a processor that changes the scores (a repetition penalty): the
answer is generated with it, as ``model.generate`` would, but what is reported is read from the raw logits."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tunelab.data.templates import render_prompt_ids
from tunelab.serve.adapters import load_registry
from tunelab.serve.engine import Engine, SamplingParams

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def penalised_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """The tiny model, its generation_config asking for a strong repetition penalty."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("penalised")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.generation_config.repetition_penalty = 3.0
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_logprobs_are_read_before_the_models_own_repetition_penalty(penalised_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, RepetitionPenaltyLogitsProcessor

    registry = load_registry(str(penalised_dir), [])
    assert registry.model.generation_config.repetition_penalty == 3.0
    engine = Engine(registry)
    prompt = render_prompt_ids(tiny_tokenizer, [{"role": "user", "content": "two plus two two plus two"}])

    async def answer():
        return await engine.result(engine.submit(registry.base_name, "generate", prompt, SamplingParams(max_tokens=8, logprobs=2)))

    try:
        result = asyncio.run(answer())
    finally:
        engine.stop()
    tokens = [item.token for item in result.logprobs]
    assert tokens
    model = AutoModelForCausalLM.from_pretrained(str(penalised_dir)).eval()
    with torch.inference_mode():
        raw = torch.log_softmax(model(input_ids=torch.tensor([prompt + tokens])).logits[0].float(), dim=-1)
    # The prompt repeats tokens, so the penalty changes the scores from the first step: the test means something.
    penalty = RepetitionPenaltyLogitsProcessor(3.0)
    penalised_first = torch.log_softmax(penalty(torch.tensor([prompt]), raw[len(prompt) - 1 : len(prompt)].clone())[0], dim=-1)
    assert abs(float(penalised_first[tokens[0]]) - float(raw[len(prompt) - 1, tokens[0]])) > 1e-3
    for position, item in enumerate(result.logprobs):
        expected = raw[len(prompt) - 1 + position]
        assert abs(item.logprob - float(expected[item.token])) < TOLERANCE, position
        best = torch.topk(expected, 2)
        assert [token for token, _ in item.top] == best.indices.tolist()
        assert all(abs(value - float(v)) < TOLERANCE for (_, value), v in zip(item.top, best.values, strict=True))
