"""The one generation path: prompts in, answers out, for ``tunelab generate``, evaluation and serving.

Everything a ``model.generate`` call needs is decided here once: which token ids end an answer
(EOS, the model's configured EOS ids, the chat templates' end-of-turn markers), left padding (every
row's next token at the last position, so a batch shares one KV-cache decode), and greedy versus
seeded sampling (explicitly greedy: a model's ``generation_config`` may carry sampling defaults).
``generate_ids`` is the single call into transformers; the three callers differ only in what they
do with the tokens: ``generate_batch`` decodes a batch (evaluation), ``stream_generate`` streams one
answer (``tunelab generate``), and the serving engine feeds its per-row stopper.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.errors import ConfigError
from tunelab.faults import kill_point
from tunelab.runtime import following_free_cores

# End-of-turn markers of common chat templates; generation stops at whichever the vocabulary has.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end an answer: EOS, the model's configured EOS ids, and end-of-turn markers."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in configured if isinstance(configured, list) else [configured]:
        if value is not None:
            ids.append(int(value))
    vocab = tokenizer.get_vocab()
    ids += [vocab[token] for token in END_OF_TURN_TOKENS if token in vocab]
    return list(dict.fromkeys(ids))


def context_length(model: Any) -> int:
    """How many positions prompt + answer may fill: the config's ``max_position_embeddings`` (2048 when it has none).
    ``model`` is a model or its transformers config (training checks a run before its weights are loaded).

    GPT-2-style models (absolute positions) fail with an IndexError past it and RoPE models answer beyond what they
    were trained on, so ``tunelab generate`` and the server refuse or cap a request against this one number."""
    config = getattr(model, "config", model)
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def check_context(config: RunConfig, model: Any) -> None:
    """Refuse a run whose rows may be longer than the model's context (:func:`context_length`): what training, its
    estimate and ``tunelab run``'s data check ask before anything is spent.

    Refused, not capped: ``data.max_length`` is the length a run is trained, evaluated and served at (it is saved with
    the run), so quietly training at another would make the saved config lie; a GPT-2-style model fails with an
    IndexError past its positions (and a RoPE model learns positions it was never trained on). Packed rows count too:
    their padding runs on as one more example, up to ``train.pack_tokens``.

    Raises:
        ConfigError: naming the key and the model's context.
    """
    context = context_length(model)
    pack_tokens = config.train.pack_tokens if config.train.packing else None
    for key, value in (("data.max_length", config.data.max_length), ("train.pack_tokens", pack_tokens)):
        if value is not None and value > context:
            raise ConfigError(
                f"{key} ({value}) is longer than the model's context of {context} tokens: set {key} to at most {context}"
            )


def pad_token_id(tokenizer: Any, stops: Sequence[int] = ()) -> int:
    """The id padding is written with: the tokenizer's pad token, else EOS, else the first stop id."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return next(iter(stops), 0)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [rows, longest], each row's tokens at the right end."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, width - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
        mask[i, width - len(sequence) :] = 1
    return ids.to(device), mask.to(device)


def sampling_options(temperature: float = 0.0, top_p: float = 1.0) -> dict[str, Any]:
    """``generate`` keyword arguments for greedy decoding (temperature 0) or nucleus sampling."""
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}
    # Explicitly greedy: the model's generation_config may carry sampling defaults.
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


@dataclass(frozen=True)
class Decoding:
    """How a model samples: greedy at temperature 0 (the default), else nucleus sampling at ``top_p``; and how long it
    answers when not told (``max_new_tokens``; None: the caller's own default, the server's limit or generate's 256).

    A run's own is ``tunelab.runs.Run.decoding`` (what its evaluation judged): the decoding ``tunelab generate``,
    ``tunelab serve`` and every export use when they are not told otherwise. A plain model's is what its own
    ``generation_config`` says (:func:`configured_decoding`; a merged export's: its run's)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int | None = None

    def told(self, temperature: float | None = None, top_p: float | None = None) -> Decoding:
        """This decoding with what a request or a flag says instead (None: left as it is)."""
        return replace(
            self, temperature=self.temperature if temperature is None else temperature, top_p=self.top_p if top_p is None else top_p
        )

    def options(self) -> dict[str, Any]:
        """``generate`` keyword arguments (:func:`sampling_options`)."""
        return sampling_options(self.temperature, self.top_p)


def judged_generation_config(model: Any, tokenizer: Any, decoding: Decoding) -> Any:
    """``model``'s ``GenerationConfig`` made to generate what :func:`generate_ids` does with ``decoding`` (its answer
    length included: a run's ``eval.max_new_tokens``, one token for a classify run's label): written as
    an export's ``generation_config.json``, so a reader that passes no decoding of its own (``model.generate(ids)``,
    vLLM) answers as the run was judged, not with the base model's sampling defaults (Llama 3 and Qwen ship
    ``do_sample: true``) nor transformers' own (20 tokens in all, top-k 50).

    The base's other settings stay: evaluation's ``generate`` call inherited them too (a repetition penalty, say)."""
    config = copy.deepcopy(model.generation_config)
    stops = stop_token_ids(model, tokenizer)
    options = decoding.options()
    if options["do_sample"]:
        options["top_k"] = 0  # no top-k cut, as generate_ids's None; None in a file is transformers' default of 50
    config.update(max_new_tokens=decoding.max_new_tokens, eos_token_id=stops, pad_token_id=pad_token_id(tokenizer, stops), **options)
    return config


def configured_decoding(model: Any, default: Decoding) -> Decoding:
    """How ``model``'s own ``generation_config`` samples, for a model that is no run (a run's is ``Run.decoding``):
    what ``tunelab serve FOLDER`` and ``tunelab generate --model FOLDER`` use when a request or a flag says nothing,
    as ``model.generate(ids)`` and vLLM do. A merged export's file says how its run was judged
    (:func:`judged_generation_config`); a hub model's, how its authors would have it sampled.

    ``do_sample: false`` is greedy; ``do_sample: true`` samples at the file's temperature and top_p (1 where it
    leaves them out, as transformers). A file that leaves ``do_sample`` unset (transformers 5 derives such a config
    from the model's config when a folder has none) says nothing of sampling: ``default``. Only temperature and
    top_p are read: a top-k cut is not carried, as :func:`generate_ids` never cuts (an export writes none). The answer
    length is the file's ``max_new_tokens`` (:func:`configured_answer_length`), else ``default``'s."""
    config = getattr(model, "generation_config", None)
    do_sample = getattr(config, "do_sample", None)
    length = configured_answer_length(model)
    length = default.max_new_tokens if length is None else length
    if do_sample is None:
        return replace(default, max_new_tokens=length)
    if not do_sample:
        return Decoding(max_new_tokens=length)
    temperature, top_p = getattr(config, "temperature", None), getattr(config, "top_p", None)
    return Decoding(1.0 if temperature is None else float(temperature), 1.0 if top_p is None else float(top_p), length)


def configured_answer_length(model: Any) -> int | None:
    """The ``max_new_tokens`` of ``model``'s own ``generation_config`` (a merged export's: the answer length its run was
    judged at), the longest answer when a request or a flag does not say; None when it has none."""
    value = getattr(getattr(model, "generation_config", None), "max_new_tokens", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def generate_ids(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stops: Sequence[int],
    pad_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    **hooks: Any,
) -> torch.Tensor:
    """The one ``model.generate`` call: prompt + answer ids [rows, prompt + new].

    ``seed`` seeds sampling (None: leave the generator as it is, as the server does); ``hooks``
    are passed through (``streamer``, ``stopping_criteria``).
    """
    if temperature > 0 and seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=list(stops) or None,
            pad_token_id=pad_id,
            **sampling_options(temperature, top_p),
            **hooks,
        )


def _by_length(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class Generated:
    """One generated answer: its text, and whether it ended at a stop id (False: cut at ``max_new_tokens``)."""

    text: str
    stopped: bool


def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], **options: Any) -> list[str]:
    """The texts of :func:`generate_answers`."""
    return [answer.text for answer in generate_answers(model, tokenizer, prompts, **options)]


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[Generated]:
    """Answer each prompt (token ids, chat template already applied) with batched KV-cache generation.

    Prompts are sorted by length and left-padded. Each answer stops at a stop id or after
    ``max_new_tokens``; special tokens are removed from the returned text.
    """
    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, stops)
    answers: list[Generated] = [Generated("", True)] * len(prompts)
    # Seeded once for the whole set, not per batch: what evaluation always did.
    if temperature > 0:
        torch.manual_seed(seed)
    for batch in following_free_cores(_by_length(prompts, batch_size), device.type):
        input_ids, attention = left_pad([prompts[i] for i in batch], pad_id, device)
        output = generate_ids(
            model, input_ids, attention, max_new_tokens=max_new_tokens, stops=stops, pad_id=pad_id,
            temperature=temperature, top_p=top_p,
        )
        longest = input_ids.shape[1]
        for row, index in enumerate(batch):
            new = output[row, longest:].tolist()
            stopped = False
            for position, token in enumerate(new):
                if token in stops:
                    new, stopped = new[:position], True
                    break
            answers[index] = Generated(tokenizer.decode(new, skip_special_tokens=True).strip(), stopped)
        if progress:
            progress(len(batch))
        kill_point("generate.batch-answered")
    return answers


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
    prompt: str | Sequence[int],
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> Iterator[str]:
    """Yield the answer to ``prompt`` piece by piece (greedy unless temperature > 0).

    ``prompt``: token ids already prepared (``tunelab.inference.chat_prompt``: what ``tunelab generate`` passes),
    or a user message put into the chat template here (with ``system``).
    """
    from transformers import TextIteratorStreamer

    class AnswerStreamer(TextIteratorStreamer):
        """Drops the stop id that ends the answer before decoding: skip_special_tokens keeps the text of a marker
        the tokenizer does not flag special (a configured EOS id, Phi-3's <|end|>), which evaluation and the
        server cut off."""

        def put(self, value: torch.Tensor) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                kept = [token for token in value.reshape(-1).tolist() if token not in stop_set]
                if not kept:
                    return
                value = torch.tensor(kept, dtype=value.dtype)
            super().put(value)

    if isinstance(prompt, str):
        input_ids = chat_input_ids(tokenizer, prompt, system).to(model.device)
    else:
        input_ids = torch.tensor([list(prompt)], dtype=torch.long, device=model.device)
    stops = stop_token_ids(model, tokenizer)
    stop_set = set(stops)
    streamer = AnswerStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            generate_ids(
                model, input_ids, torch.ones_like(input_ids), max_new_tokens=max_new_tokens, stops=stops,
                pad_id=pad_token_id(tokenizer, stops), temperature=temperature, top_p=top_p, seed=seed, streamer=streamer,
            )
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
