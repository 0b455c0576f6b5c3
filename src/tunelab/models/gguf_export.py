"""A run as one GGUF file for llama.cpp, Ollama and LM Studio, and an Ollama ``Modelfile`` beside it.

The weights are the run's merged ones (``tunelab.runs.merge_run``), written with the ``gguf`` package's writer
under llama.cpp's names and metadata keys. Everything a reader needs travels in the file: the
architecture, the byte-level BPE tokenizer (vocabulary, merges, special ids) and the chat template
the run was trained with; a classify run adds its label map (``tunelab.labels``).

Two details decide whether the round trip is exact:

- llama.cpp stores the query and key projections of Llama with the rows of each head interleaved
  for its rotary kernel (``permute`` in llama.cpp's ``convert_hf_to_gguf.py``); readers undo it
  (transformers' ``LlamaTensorProcessor._reverse_permute_weights``), so we apply it.
- The output head is written only when it differs from the embedding matrix; readers take a file
  without ``output.weight`` as tied.

Everything that can make an export fail (architecture, tokenizer, quantization) is checked before
the output file is opened, and the file appears under its name only once complete.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.errors import ModelError
from tunelab.models.adapters import MergedRun
from tunelab.paths import atomic_write_text

QUANTS: tuple[str, ...] = ("f16", "q8_0")
# transformers model_type -> GGUF general.architecture. Only architectures whose tensor layout and
# metadata this module writes exactly are listed; anything else fails before writing.
SUPPORTED_ARCHITECTURES: dict[str, str] = {"llama": "llama"}
LABELS_KEY = "tunelab.labels"
TASK_KEY = "tunelab.task"
SYSTEM_PROMPT_KEY = "tunelab.system_prompt"
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"

# The Go-template form (Ollama) of the ChatML chat template: each message as
# <|im_start|>role\ncontent<|im_end|>\n, then the assistant turn opened. Ollama puts the Modelfile's
# SYSTEM first when a request brings no system message, as the Jinja template does with its default.
CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class GGUFExport:
    """What ``export_gguf`` wrote."""

    path: Path
    quant: str
    size_bytes: int
    tensors: int
    tied_output: bool
    modelfile: Path | None = None
    ollama_name: str | None = None
    labels: list[str] | None = None

    @property
    def ollama_command(self) -> str | None:
        if self.modelfile is None:
            return None
        return f"ollama create {self.ollama_name} -f {self.modelfile}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "quant": self.quant,
            "size_bytes": self.size_bytes,
            "tensors": self.tensors,
            "tied_output": self.tied_output,
            "modelfile": str(self.modelfile) if self.modelfile else None,
            "ollama_command": self.ollama_command,
            "labels": self.labels,
        }


@dataclass(frozen=True)
class _Tokenizer:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


def write_gguf(
    merged: MergedRun, out_path: str | Path, *, quant: str = "f16", ollama: bool = False, classify_instruction: str | None = None
) -> GGUFExport:
    """Write a run's merged weights (``tunelab.runs.merge_run``) as one GGUF file at ``out_path`` (and a
    Modelfile beside it with ``ollama``). ``tunelab.runs.export_gguf`` merges a run folder and calls this.

    ``classify_instruction``: the instruction a classify run was trained with, shown in the Modelfile
    (the data layer owns the prompt, and models sits beside it, so the caller passes it in).

    Raises:
        ModelError: when the output exists, the architecture or tokenizer cannot be written as GGUF, or
            ``quant`` is unknown.
    """
    out = Path(out_path)
    check_targets(out, quant, ollama)
    architecture = _architecture(merged.model.config)
    tokenizer = _tokenizer_metadata(merged)
    tensors, tied = _gguf_tensors(merged.state_dict, merged.model.config, quant)
    labels = merged.label_map
    system_prompt = _system_prompt(merged.run_config)
    modelfile = modelfile_path(out) if ollama else None
    name = ollama_model_name(merged.name) if ollama else None
    modelfile_content = None
    if ollama:
        # The run saw its own system prompt, or the template's default one when it had none.
        system = system_prompt or default_system_prompt(tokenizer.chat_template, merged.tokenizer)
        task = str(merged.run_config.get("task", "run"))
        modelfile_content = modelfile_text(out, tokenizer.chat_template, system, labels, task, classify_instruction)

    from gguf import GGUFWriter

    # Written under a temporary name and renamed when complete: a reader never sees half a file.
    writer_target = _temporary_sibling(out)
    writer = GGUFWriter(str(writer_target), arch=architecture)
    try:
        _write_metadata(writer, merged, tokenizer, quant, system_prompt)
        for tensor_name, data, raw_dtype in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        # mkstemp makes the file private (0600); an exported model is meant to be read by other tools.
        os.chmod(writer_target, _default_file_mode())
        os.replace(writer_target, out)
    except BaseException:
        writer.close()
        writer_target.unlink(missing_ok=True)
        raise
    if modelfile is not None and modelfile_content is not None:
        atomic_write_text(modelfile, modelfile_content)
        os.chmod(modelfile, _default_file_mode())
    return GGUFExport(
        path=out,
        quant=quant,
        size_bytes=out.stat().st_size,
        tensors=len(tensors),
        tied_output=tied,
        modelfile=modelfile,
        ollama_name=name,
        labels=list(labels["labels"]) if labels else None,
    )


def check_targets(out: Path, quant: str, ollama: bool) -> None:
    if quant not in QUANTS:
        raise ModelError(f"--quant {quant!r} is not supported", f"use one of: {', '.join(QUANTS)}")
    for target in (out, modelfile_path(out) if ollama else None):
        if target is not None and target.exists():
            raise ModelError(f"{target} already exists; export never overwrites", "choose a new output name")


def modelfile_path(gguf_path: Path) -> Path:
    """``model.gguf`` -> ``model.Modelfile``: one per export, so several exports can share a folder."""
    return gguf_path.with_suffix(".Modelfile")


def ollama_model_name(run_name: str) -> str:
    """A name ``ollama create`` accepts (lowercase letters, digits, '-', '_', '.')."""
    name = re.sub(r"[^a-z0-9._-]+", "-", run_name.lower()).strip("-._")
    return name or "tunelab-model"


# ------------------------------------------------------------------------------------------ checks


def _architecture(config: Any) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"cannot export a {model_type!r} model to GGUF",
            f"supported architectures: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}; "
            "use `tunelab export --merge` for a transformers folder",
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in (None, "default"):
        raise ModelError(
            f"cannot export a llama model with rope scaling {rope_type!r} to GGUF yet",
            "use `tunelab export --merge` for a transformers folder",
        )
    return SUPPORTED_ARCHITECTURES[model_type]


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def _system_prompt(run_config: dict) -> str | None:
    data = run_config.get("data") or {}
    return data.get("system_prompt") if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------- tokenizer


def _tokenizer_metadata(merged: MergedRun) -> _Tokenizer:
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary.

    Raises:
        ModelError: for a tokenizer that is not byte-level BPE, or larger than the embedding matrix.
    """
    from gguf import TokenType

    tokenizer = merged.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("the run's tokenizer has no tokenizer.json (a fast tokenizer is needed for GGUF export)")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ModelError(
            "cannot export this tokenizer to GGUF: only byte-level BPE tokenizers (GPT-2 style) are supported",
            f"the run's tokenizer is {model.get('type')} with pre-tokenizer "
            f"{(spec.get('pre_tokenizer') or {}).get('type')}",
        )
    vocab_rows = int(merged.model.config.vocab_size)
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_rows:
        raise ModelError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_rows} embedding rows"
        )
    by_id = {index: token for token, index in vocab.items()}
    added = {token.content: token for token in tokenizer.added_tokens_decoder.values()}
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_rows):
        token = by_id.get(index)
        if token is None:
            # Embedding rows without a token (vocabularies padded to a multiple): llama.cpp's converter
            # names them [PADn] so that the vocabulary has one entry per row.
            tokens.append(f"[PAD{index}]")
            types.append(int(TokenType.UNUSED))
        elif token in added:
            tokens.append(token)
            types.append(int(TokenType.CONTROL if added[token].special else TokenType.USER_DEFINED))
        else:
            tokens.append(token)
            types.append(int(TokenType.NORMAL))
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges") or []]

    def token_id(name: str) -> int | None:
        value = getattr(tokenizer, f"{name}_token_id", None)
        return int(value) if value is not None else None

    probe = tokenizer("a")["input_ids"]
    bos = token_id("bos")
    return _Tokenizer(
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=_pre_tokenizer_name(merged, spec),
        bos_id=bos,
        eos_id=token_id("eos"),
        unk_id=token_id("unk"),
        pad_id=token_id("pad"),
        # What the tokenizer does on plain text, so llama.cpp adds a BOS exactly when transformers does.
        add_bos=bool(probe) and bos is not None and probe[0] == bos,
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    )


def _pre_tokenizer_name(merged: MergedRun, spec: dict) -> str:
    """llama.cpp's name for how text is split before BPE (``tokenizer.ggml.pre``).

    A run on a GGUF base (the default model) keeps its base's value: the tokenizer is the base's. Otherwise
    a plain GPT-2 byte-level split is "gpt2", and digits split one by one before it is "smollm".
    """
    source = merged.base_source
    if source is not None and source.kind in ("default", "gguf"):
        # transformers' metadata reader skips the vocabulary arrays: 0.03 s where gguf's GGUFReader takes 8 s.
        from transformers.integrations.gguf import read_gguf_metadata

        pre = read_gguf_metadata(source.location)[0].get("tokenizer.ggml.pre")
        if isinstance(pre, str):
            return pre
    described = json.dumps(spec.get("pre_tokenizer"))
    if '"Digits"' in described and '"individual_digits": true' in described:
        return "smollm"
    return "gpt2"


# ----------------------------------------------------------------------------------------- tensors


def _llama_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: interleave the two rotary halves of each head.
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _gguf_tensors(
    state_dict: dict[str, torch.Tensor], config: Any, quant: str
) -> tuple[list[tuple[str, np.ndarray, Any]], bool]:
    """(name, data, raw_dtype) for every tensor, in llama.cpp's names; and whether the head is tied.

    Raises:
        ModelError: for a weight llama.cpp has no name for, or one q8_0 cannot quantize.
    """
    from gguf import MODEL_ARCH, GGMLQuantizationType, get_tensor_name_map
    from gguf.quants import QuantError, quantize

    names = get_tensor_name_map(MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    embed = state_dict.get("model.embed_tokens.weight")
    head = state_dict.get("lm_head.weight")
    tied = head is None or (embed is not None and head.shape == embed.shape and torch.equal(head, embed))

    out: list[tuple[str, np.ndarray, Any]] = []
    for hf_name, tensor in state_dict.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_base = names.get_name(base)
        if gguf_base is None or suffix not in ("weight", "bias"):
            raise ModelError(f"cannot export the weight {hf_name!r}: llama.cpp has no name for it")
        gguf_name = f"{gguf_base}.{suffix}"
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if gguf_base.endswith(".attn_q"):
            data = _llama_permute(data, heads)
        elif gguf_base.endswith(".attn_k"):
            data = _llama_permute(data, kv_heads)
        if data.ndim == 1:
            # Norms and biases stay f32, as llama.cpp's converter keeps them: they are tiny and precision-critical.
            out.append((gguf_name, data, None))
        elif quant == "f16":
            out.append((gguf_name, data.astype(np.float16), None))
        else:
            try:
                out.append((gguf_name, quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0))
            except QuantError as error:
                raise ModelError(f"cannot quantize {hf_name} {tuple(data.shape)} to q8_0: {error}", "use --quant f16") from None
    return out, tied


# ---------------------------------------------------------------------------------------- metadata


def _write_metadata(writer: Any, merged: MergedRun, tokenizer: _Tokenizer, quant: str, system_prompt: str | None) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    config = merged.model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_name(merged.name)
    writer.add_type("model")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(int(LlamaFileType.MOSTLY_F16 if quant == "f16" else LlamaFileType.MOSTLY_Q8_0))
    if quant != "f16":
        writer.add_quantization_version(GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer.pre)
    writer.add_token_list(tokenizer.tokens)
    writer.add_token_types(tokenizer.token_types)
    writer.add_token_merges(tokenizer.merges)
    for value, add in (
        (tokenizer.bos_id, writer.add_bos_token_id),
        (tokenizer.eos_id, writer.add_eos_token_id),
        (tokenizer.unk_id, writer.add_unk_token_id),
        (tokenizer.pad_id, writer.add_pad_token_id),
    ):
        if value is not None:
            add(value)
    writer.add_add_bos_token(tokenizer.add_bos)
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    writer.add_string(TASK_KEY, str(merged.run_config.get("task", "")))
    if system_prompt:
        writer.add_string(SYSTEM_PROMPT_KEY, system_prompt)
    if merged.label_map:
        labels = merged.label_map
        writer.add_string(
            LABELS_KEY,
            json.dumps(
                {key: list(labels[key]) for key in ("labels", "token_ids", "token_strings")}, ensure_ascii=False
            ),
        )


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temporary_sibling(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    return Path(name)


# --------------------------------------------------------------------------------------- Modelfile


def default_system_prompt(chat_template: str | None, tokenizer: Any) -> str | None:
    """The system message a ChatML template inserts when a conversation brings none, if any."""
    if not chat_template:
        return None
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render has no default to find
        return None
    match = re.match(re.escape(CHATML_START) + r"system\n(.*?)" + re.escape(CHATML_END), str(rendered), re.S)
    return match.group(1) if match else None


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ModelError('the system prompt contains """, which a Modelfile cannot quote', "remove the triple quotes")
    return f'"""{text}"""'


def modelfile_text(
    gguf_path: Path,
    chat_template: str | None,
    system: str | None,
    label_map: dict | None,
    task: str,
    classify_instruction: str | None = None,
) -> str:
    """An Ollama Modelfile for the exported file: FROM, TEMPLATE, stop tokens, SYSTEM, label notes."""
    chatml = bool(chat_template) and CHATML_START in chat_template and CHATML_END in chat_template
    lines = [f"# Written by tunelab export ({task} run).", f"FROM ./{gguf_path.name}", ""]
    if chatml:
        lines.append(f'TEMPLATE """{CHATML_GO_TEMPLATE}"""')
        lines.append(f'PARAMETER stop "{CHATML_END}"')
        lines.append(f'PARAMETER stop "{CHATML_START}"')
    else:
        lines.append("# No TEMPLATE: the chat template is not ChatML; Ollama derives one from the GGUF's")
        lines.append("# tokenizer.chat_template.")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    if label_map:
        # A classify model answers with exactly one token; greedy, like tunelab's own evaluation.
        lines += ["PARAMETER temperature 0", "PARAMETER num_predict 1", ""]
        lines.append("# Classify: ask with the prompt the run was trained on, the assistant answers one token:")
        if classify_instruction:
            lines.append(f"#   {classify_instruction}\\n\\nText: <your text>")
        lines.append("# What each answer token means:")
        for label, code in zip(label_map["labels"], label_map["token_strings"], strict=True):
            lines.append(f"#   {code!r} = {label}")
    return "\n".join(lines) + "\n"
