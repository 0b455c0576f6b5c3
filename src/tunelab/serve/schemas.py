"""Request bodies of the API, as pydantic models: FastAPI validates with them and they make the OpenAPI schema.

Field names, types and bounds follow the OpenAI API, strictly as it checks them: a number sent as a
string (``"max_tokens": "5"``) is refused, not converted. Unknown fields are accepted and ignored (the
official clients send optional fields such as ``user``), but fields that would change the answer and
that tunelab does not implement (``n`` > 1, tools, penalties, ``logit_bias``, a JSON ``response_format``, ``best_of``,
``suffix``...) are refused with a 400 by the endpoint rather than silently ignored; so are other servers' sampling
extensions (``top_k``, ``repetition_penalty``, ``min_tokens``, guided decoding...: ``routes._EXTENSIONS``) set to
anything but their no-op value. A completions prompt may be token
ids (OpenAI's list of integers, or list of such lists: lm-evaluation-harness's default), used as given. Token log-probabilities are answered
(chat ``logprobs``/``top_logprobs``; completions ``logprobs``/``echo``, ``max_tokens`` 0 with ``echo`` to score a prompt).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

# Stop strings: OpenAI takes at most 4, vLLM and llama.cpp's server any number; lm-evaluation-harness's
# local-completions sends a task's ``until`` list plus its EOS text (5 for a task of 4). A cap keeps the per-token
# stop check of a request bounded (each string is looked for in the answer after every token).
MAX_STOP_SEQUENCES = 32
MAX_STOP_LENGTH = 256
MAX_PROMPTS_PER_REQUEST = 32


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    # Required, as OpenAI has it; null only for an assistant turn (the endpoint refuses it for other roles).
    content: str | list[TextPart] | None = Field(..., description="A string or a list of text parts; null only for an assistant message.")
    # A participant's name, written into the prompt (``routes._turn``): OpenAI's pattern, so no name carries a sentence
    # or a line break into what the model reads.
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The sender's name (letters, digits, _ and -), shown to the model.")

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        # An image, audio or file part would be dropped from the prompt: refused by name (its index), where the
        # validation of the union said only "Input should be a valid string" of 'content.str'.
        if isinstance(value, list):
            for index, part in enumerate(value):
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind != "text":
                    raise PydanticCustomError(
                        "unsupported_content_part",
                        "a content part of type '{kind}' is not supported by this server: only 'text' parts are",
                        {"kind": kind, "index": index},
                    )
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Sampling(_Request):
    model: str = Field(..., description="The base model's name or an adapter's name (GET /v1/models).")
    max_tokens: int | None = Field(None, ge=1, strict=True, description="Longest answer in tokens (capped by the server limit).")
    # Left out (or null): a run's own eval.temperature / eval.top_p, what its evaluation judged; for a plain model what
    # its generation_config says (a merged export's: its run's), else 1.0 (OpenAI's default). See ``routes.Service.sampling``.
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, strict=True,
                                      description="0 is greedy; left out: the run's own (its evaluation's), a plain model's "
                                      "generation_config, else 1.")
    top_p: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False, strict=True,
                                description="Nucleus sampling mass; left out: the run's own, a plain model's generation_config, else 1.")
    stop: str | list[str] | None = Field(
        None, description=f"Up to {MAX_STOP_SEQUENCES} stop sequences (OpenAI: 4), each at most {MAX_STOP_LENGTH} characters."
    )
    n: int = Field(1, strict=True, description="Number of answers; only 1 is supported.")
    stream: bool = Field(False, strict=True, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="Only with stream: true (as OpenAI: else a 400).")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, strict=True,
                             description="Reproducible sampling: the same seed and request give the same sample (greedy: no effect).")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False, strict=True, description="Not supported: only 0 (refused).")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False, strict=True, description="Not supported: only 0 (refused).")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported: only {} (refused).")

    @field_validator("temperature", "top_p", "n", "stream", "echo", mode="before", check_fields=False)
    @classmethod
    def _null_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # OpenAI takes null for these and answers as if they were left out (the official client sends null for None).
        return cls.model_fields[info.field_name].default if value is None else value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True, description="Newer name of max_tokens.")
    logprobs: bool | None = Field(None, strict=True, description="Each answer token's log-probability under the model (the "
                                  "log-softmax of its logits, before temperature and top-p); a classify run's: its label's.")
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True,
                                     description="0 to 20 most likely alternatives of each answer token (needs logprobs: true).")
    tools: list | None = None
    tool_choice: str | dict | None = Field(None, description='Only "none" (tool calling is refused; any other needs tools, as OpenAI says).')
    functions: list | None = Field(None, description="Deprecated tool calling: refused.")
    function_call: str | dict | None = Field(None, description='Only "none" (function calling is refused; any other needs functions, as OpenAI says).')
    modalities: list[str] | None = Field(None, description='Only ["text"] (audio output is refused).')
    audio: dict | None = Field(None, description="Audio output: refused.")
    response_format: dict | None = Field(None, description='Only {"type": "text"} (JSON modes are refused).')


def _kind(item: Any) -> str:
    names = {list: "a list", str: "a string", dict: "an object", int: "an integer", float: "a number", bool: "a boolean", type(None): "null"}
    return names.get(type(item), type(item).__name__)


def _token_id_problem(ids: list, where: tuple[int, ...]) -> tuple[str, tuple[int, ...]] | None:
    """What is wrong with one token-id prompt (and where), or None: non-negative integers, at least one."""
    if not ids:
        return "a token-id prompt must hold at least one token id", where
    for index, token in enumerate(ids):
        # bool is an int to Python, not to JSON: true is no token id.
        if not isinstance(token, int) or isinstance(token, bool):
            return f"a token id must be an integer, not {_kind(token)}", (*where, index)
        if token < 0:
            return f"a token id must not be negative, not {token}", (*where, index)
    return None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description=f"A prompt, or up to {MAX_PROMPTS_PER_REQUEST} prompts; each a string or a list of token ids (used as given)."
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_kind_of_prompt(cls, value: Any) -> Any:
        # OpenAI's four shapes: a string, strings, token ids, lists of token ids. A list that is not all strings is checked
        # here as the shape its first item starts, naming the first bad item's index, where the union's four failures
        # said only "Input should be a valid string" of 'prompt.list[str].1'.
        if not isinstance(value, list) or not value or all(isinstance(item, str) for item in value):
            return value
        if isinstance(value[0], list):
            problem = next(((f"a batch of token-id prompts holds only lists of token ids, not {_kind(item)}", (index,))
                            for index, item in enumerate(value) if not isinstance(item, list)), None)
            problem = problem or next(filter(None, (_token_id_problem(item, (index,)) for index, item in enumerate(value))), None)
        elif isinstance(value[0], str):
            index = next(i for i, item in enumerate(value) if not isinstance(item, str))
            problem = f"a list of prompts holds only strings, not {_kind(value[index])}", (index,)
        else:
            problem = _token_id_problem(value, ())
        if problem is not None:
            message, where = problem
            raise PydanticCustomError("invalid_prompt", "{message}", {"message": message, "at": ".".join(map(str, where))})
        return value

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts, each a string or one prompt's token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]  # type: ignore[list-item]
        return list(self.prompt)  # type: ignore[arg-type]

    max_tokens: int | None = Field(None, ge=0, strict=True,
                                   description="Longest answer in tokens (default 16, as OpenAI); 0 only with echo (the prompt scored).")
    echo: bool = Field(False, strict=True, description="The prompt comes first in the text (and in the logprobs, its first token's null).")
    # OpenAI takes 0 to 5; up to 20 as vLLM (lm-evaluation-harness asks for a few).
    logprobs: int | None = Field(None, ge=0, le=20, strict=True,
                                 description="Each token's log-probability under the model (the log-softmax of its logits, before "
                                 "temperature and top-p), with this many (0 to 20) most likely alternatives.")
    best_of: int | None = Field(None, strict=True)
    suffix: str | None = None


class ClassifyRequest(_Request):
    model: str = Field(..., description="A classify run served here (an adapter name or the base when it is one).")
    input: str | list[str] = Field(..., description=f"A text, or up to {MAX_PROMPTS_PER_REQUEST} texts.")


class FeedbackRequest(BaseModel):
    """The correct answer for a response this server gave (its ``id``): a label, a completion or a rating."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, description="The id of the response (chatcmpl-..., cmpl-..., clf-...).")
    index: int = Field(0, ge=0, strict=True, description="Which input of a multi-input classify request.")
    label: str | None = Field(None, min_length=1, description="classify: the correct label (a new one is fine).")
    completion: str | None = Field(None, description="chat/completions: the answer that should have been given.")
    rating: Literal[-1, 1] | None = Field(None, description="Thumbs up (1) or down (-1).")
    thumbs: Literal["up", "down"] | None = Field(None, description="Same as rating, as a word.")
