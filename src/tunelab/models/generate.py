"""Interactive generation: one prompt, chat template applied, tokens streamed as they are produced.

Batched generation for evaluation lives in ``tunelab.evaluation``; this is the single-prompt path
used by ``tunelab generate``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import torch


def chat_input_ids(tokenizer: Any, prompt: str, system: str | None = None) -> torch.Tensor:
    """Token ids of ``prompt`` as a user turn, with the assistant's turn opened (generation prompt)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        return encoded["input_ids"]
    # A base model without a chat template continues the raw text.
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def stream_generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[str]:
    """Yield the answer to ``prompt`` piece by piece (greedy unless temperature > 0)."""
    from transformers import TextIteratorStreamer

    input_ids = chat_input_ids(tokenizer, prompt, system).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = temperature > 0
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        streamer=streamer,
        pad_token_id=tokenizer.pad_token_id,
    )
    if sampling:
        torch.manual_seed(seed)
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        # Explicitly greedy: the model's generation_config may carry sampling defaults.
        kwargs.update(temperature=None, top_p=None, top_k=None)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as error:  # re-raised in the caller's thread below
            errors.append(error)
            streamer.end()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def generate_text(model: Any, tokenizer: Any, prompt: str, **kwargs: Any) -> str:
    """The whole answer to ``prompt`` as one string."""
    return "".join(stream_generate(model, tokenizer, prompt, **kwargs)).strip()
