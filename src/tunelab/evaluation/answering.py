"""The one model interface: whatever answers — the base model, a run, a remote endpoint, a cloud job's fine-tuned
model, a distillation teacher — is an :class:`AnsweringModel`, opened by :func:`open_model`.

Each answers in two ways, the same for every kind:

- ``evaluate(records, task, ...)``: scored on test records (an ``EvalResult``), with the same sample, checks,
  prompts and metrics as every other model (a local model through ``evaluate.evaluate``, a remote one through
  ``remote.evaluate_remote``);
- ``ask(questions, task, ...)``: one answer per question (an sft prompt's messages, or a classify text), each
  handed to ``on_answer`` as it arrives, with what it used and cost (``remote.client.Answer``): what a
  distillation teacher does.

``base_model()`` is the local model under it (a run's base, a plain model itself; a remote model has none):
the base and few-shot baselines run on it. Callers never branch on the kind of model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tunelab.config import DataConfig, EndpointConfig, EvalConfig
from tunelab.data.labels import LabelMap, OutOfScope, build_label_map
from tunelab.data.records import ClassifyRecord, Message, Record
from tunelab.evaluation.result import EvalResult
from tunelab.remote.client import Answer, RequestEstimate

Progress = Callable[[int], None]
OnAnswer = Callable[[int, Answer], None]
Question = str | Sequence[Message]  # a classify text, or an sft prompt's messages (the system prompt is added here)
LOCAL_CHUNK = 16  # a local model answers this many questions between two on_answer calls


class AnsweringModel(Protocol):
    """A model that answers (see the module docstring)."""

    name: str
    remote: bool

    def evaluate(
        self, records: Sequence[Record], task: str, *, config: EvalConfig, data_config: DataConfig, label_map: LabelMap | None = None,
        baseline: bool = False, train_ids: Collection[str] | None = None, progress: Progress | None = None,
        baseline_name: str | None = None, out_of_scope: OutOfScope | None = None,
    ) -> EvalResult: ...

    def ask(
        self, questions: Sequence[Question], task: str, *, config: EvalConfig, data_config: DataConfig, labels: Sequence[str] = (),
        on_answer: OnAnswer | None = None, progress: Progress | None = None,
    ) -> list[Answer]: ...

    def estimate_evaluate(
        self, records: Sequence[Record], task: str, *, config: EvalConfig, data_config: DataConfig, labels: Sequence[str] | None = None,
    ) -> RequestEstimate | None: ...

    def estimate_ask(
        self, questions: Sequence[Question], task: str, *, config: EvalConfig, data_config: DataConfig, labels: Sequence[str] = (),
        expected_output_tokens: Sequence[int | None] | None = None,
    ) -> RequestEstimate | None: ...

    def base_model(self, *, allow_network: bool = False) -> Any: ...

    @property
    def label_map(self) -> LabelMap | None: ...

    @property
    def out_of_scope_label(self) -> str | None: ...

    @property
    def run(self) -> Any: ...

    def answer_label_map(self, labels: Sequence[str]) -> LabelMap: ...


@dataclass
class LocalModel:
    """A model that runs here: a plain model or a run (``tunelab.models.LoadedModel``)."""

    loaded: Any
    remote: bool = False

    @property
    def name(self) -> str:
        return self.loaded.source.display_name

    @property
    def label_map(self) -> LabelMap | None:
        return self.loaded.label_map

    @property
    def out_of_scope_label(self) -> str | None:
        """A classify run's out-of-scope label (its saved rule), else None."""
        return self.loaded.out_of_scope.label if self.loaded.out_of_scope is not None else None

    @property
    def run(self) -> Any:
        """The run it is (``tunelab.runs.Run``: the settings it was evaluated and is served with), or None."""
        return self.loaded.run

    def evaluate(
        self, records: Sequence[Record], task: str, *, config: EvalConfig, data_config: DataConfig, label_map: LabelMap | None = None,
        baseline: bool = False, train_ids: Collection[str] | None = None, progress: Progress | None = None,
        baseline_name: str | None = None, out_of_scope: OutOfScope | None = None,
    ) -> EvalResult:
        from tunelab.evaluation.evaluate import evaluate

        result = evaluate(self.loaded, records, task, config=config, data_config=data_config, label_map=label_map, baseline=baseline,
                          train_ids=train_ids, progress=progress, out_of_scope=out_of_scope)
        if baseline_name is not None:
            result.baseline_name = baseline_name
            result.settings["baseline"] = baseline_name
        return result

    def answer_label_map(self, labels: Sequence[str]) -> LabelMap:
        """The labels it answers over: a classify run's own, else ``labels`` as tokens of its vocabulary."""
        return self.label_map if self.label_map is not None else build_label_map(list(labels), self.loaded.tokenizer)

    def ask(
        self, questions: Sequence[Question], task: str, *, config: EvalConfig, data_config: DataConfig, labels: Sequence[str] = (),
        on_answer: OnAnswer | None = None, progress: Progress | None = None,
    ) -> list[Answer]:
        """Answers in chunks of ``LOCAL_CHUNK`` (batched): each answer's latency is its chunk's time per question."""
        from tunelab.data.templates import with_system_prompt
        from tunelab.evaluation.evaluate import answer_prompts, evaluate

        every = data_config.model_copy(update={"max_test_examples": None})
        answers: list[Answer] = []
        for start in range(0, len(questions), LOCAL_CHUNK):
            chunk = list(questions[start : start + LOCAL_CHUNK])
            began = time.perf_counter()
            if task == "classify":
                label_map = self.answer_label_map(labels)
                # The label is a placeholder: evaluate needs records, and only the prediction is read.
                records = [ClassifyRecord(str(text), label_map.labels[0]) for text in chunk]
                result = evaluate(self.loaded, records, "classify", config=config, data_config=every, label_map=label_map,
                                  baseline=self.label_map is None)
                texts = [row["prediction"] for row in result.rows]
            else:
                conversations = [with_system_prompt([dict(m) for m in messages], data_config.system_prompt) for messages in chunk]
                texts, _, _ = answer_prompts(self.loaded, conversations, config, data_config.max_length)
            seconds = (time.perf_counter() - began) / len(chunk)  # batched: seconds per answer, not one request's latency
            for offset, text in enumerate(texts):
                answer = Answer(text, latency_s=seconds)
                answers.append(answer)
                if on_answer is not None:
                    on_answer(start + offset, answer)
            if progress is not None:
                progress(len(chunk))
        return answers

    def estimate_evaluate(self, records: Sequence[Record], task: str, **settings: Any) -> RequestEstimate | None:
        """None: a model that runs here sends no paid requests (its time is estimated elsewhere)."""
        return None

    def estimate_ask(self, questions: Sequence[Question], task: str, **settings: Any) -> RequestEstimate | None:
        return None

    def base_model(self, *, allow_network: bool = False) -> Any:
        """The model an adapter sits on, a full run's starting model, else this model itself.

        Raises:
            ModelError: when that model cannot be loaded.
        """
        from tunelab.runs import load_model

        loaded = self.loaded
        if loaded.base_source is not None:
            return load_model(loaded.base_source, allow_network=allow_network)
        if loaded.run is not None:
            return loaded.run.base.load()
        return loaded


@dataclass
class RemoteModel:
    """A model behind an OpenAI-compatible endpoint (``tunelab.remote.RemoteClient``): a hosted model, a
    provider's fine-tuned model (a cloud job), a remote teacher.

    ``training_prompt``: a cloud run's fine-tuned model, asked exactly the prompt it was trained on (its training chats
    never offered an out-of-scope label, so its evaluation does not either)."""

    client: Any
    remote: bool = True
    training_prompt: bool = False

    @property
    def name(self) -> str:
        return self.client.display_name

    @property
    def label_map(self) -> LabelMap | None:
        return None

    @property
    def out_of_scope_label(self) -> str | None:
        return None

    @property
    def run(self) -> Any:
        return None

    def answer_label_map(self, labels: Sequence[str]) -> LabelMap:
        """The labels it answers over, by their names (a chat API has no label tokens)."""
        from tunelab.evaluation.remote import names_label_map

        return names_label_map(list(labels))

    def evaluate(
        self, records: Sequence[Record], task: str, *, config: EvalConfig, data_config: DataConfig, label_map: LabelMap | None = None,
        baseline: bool = False, train_ids: Collection[str] | None = None, progress: Progress | None = None,
        baseline_name: str | None = None, out_of_scope: OutOfScope | None = None,
    ) -> EvalResult:
        """Asked with the zero-shot prompt that lists the categories by name (a chat API gives no label-token scores).

        Under ``data_config.out_of_scope_label`` the prompt also offers that label, as a user asking a chat model would
        (evaluated or a baseline alike: a threshold on a confidence of 1 rejects nothing); a cloud run's fine-tuned model
        (``training_prompt``) is asked its training prompt, which has no option.
        """
        from tunelab.evaluation.remote import evaluate_remote

        labels = list(label_map.labels) if label_map is not None else None
        offered = self._offered(data_config)
        return evaluate_remote(self.client, records, task, config=config, data_config=data_config, labels=labels, train_ids=train_ids,
                               baseline_name=baseline_name, progress=progress, out_of_scope_label=offered)

    def _offered(self, data_config: DataConfig) -> str | None:
        """The out-of-scope label its prompt offers (``evaluate`` and ``estimate_evaluate`` alike)."""
        return None if self.training_prompt else data_config.out_of_scope_label

    def ask(
        self, questions: Sequence[Question], task: str, *, config: EvalConfig, data_config: DataConfig, labels: Sequence[str] = (),
        on_answer: OnAnswer | None = None, progress: Progress | None = None,
    ) -> list[Answer]:
        """The same request bodies as ``evaluate`` sends, so a teacher's evaluation reuses its cached answers."""
        conversations, max_tokens = self._conversations(questions, task, data_config, config, labels)
        return self.client.chat_many(conversations, max_tokens=max_tokens, temperature=config.temperature, top_p=config.top_p,
                                     seed=config.seed, progress=progress, on_answer=on_answer)

    def _conversations(
        self, questions: Sequence[Question], task: str, data_config: DataConfig, config: EvalConfig, labels: Sequence[str]
    ) -> tuple[list[list[dict[str, str]]], int]:
        from tunelab.data.templates import with_system_prompt
        from tunelab.evaluation.remote import classify_conversation

        system = data_config.system_prompt
        if task == "classify":
            return [classify_conversation(str(text), labels, system) for text in questions], min(config.max_new_tokens, 32)
        return [with_system_prompt([dict(m) for m in messages], system) for messages in questions], config.max_new_tokens

    def estimate_ask(
        self, questions: Sequence[Question], task: str, *, config: EvalConfig, data_config: DataConfig, labels: Sequence[str] = (),
        expected_output_tokens: Sequence[int | None] | None = None,
    ) -> RequestEstimate:
        """What ``ask`` with the same arguments would cost (``RemoteClient.estimate``: the same request bodies)."""
        conversations, max_tokens = self._conversations(questions, task, data_config, config, labels)
        return self.client.estimate(conversations, max_tokens=max_tokens, temperature=config.temperature, top_p=config.top_p,
                                    seed=config.seed, expected_output_tokens=expected_output_tokens)

    def estimate_evaluate(
        self, records: Sequence[Record], task: str, *, config: EvalConfig, data_config: DataConfig, labels: Sequence[str] | None = None,
    ) -> RequestEstimate:
        """What ``evaluate`` with the same arguments would cost (``remote.estimate_remote``)."""
        from tunelab.evaluation.remote import estimate_remote

        return estimate_remote(self.client, records, task, config=config, data_config=data_config, labels=labels,
                               out_of_scope_label=self._offered(data_config))

    def base_model(self, *, allow_network: bool = False) -> Any:
        return None


def open_model(
    name: str | EndpointConfig, *, allow_network: bool = False, concurrency: int | None = None, check: bool = True
) -> AnsweringModel:
    """The model named ``name``: an endpoint (``openai:NAME``, an ``EndpointConfig``) answers remotely; a run
    folder, ``default``, a model folder, a .gguf or a hub id is loaded here.

    Raises:
        ModelError: when a local model cannot be loaded.
        RemoteError, ConfigError: when an endpoint cannot be reached or has no API key.
    """
    endpoint = name if isinstance(name, EndpointConfig) else EndpointConfig.parse_name(name)
    if endpoint is not None:
        return remote_model(endpoint, concurrency=concurrency, check=check)
    from tunelab.runs import load_model

    return LocalModel(load_model(name, allow_network=allow_network))


def remote_model(endpoint: EndpointConfig, *, concurrency: int | None = None, check: bool = True, name: str | None = None) -> RemoteModel:
    """The model behind ``endpoint`` (``name``: another model of the same provider, e.g. a cloud job's fine-tuned one).

    Raises:
        RemoteError: when ``check`` and the endpoint does not answer.
        ConfigError: when the endpoint's API key variable is empty.
    """
    from tunelab.evaluation.remote import remote_client

    if name is not None:
        endpoint = endpoint.model_copy(update={"name": name})
    client = remote_client(endpoint, concurrency=concurrency)
    if check:
        client.check()
    return RemoteModel(client)
