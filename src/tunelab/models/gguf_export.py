"""A run as one GGUF file for llama.cpp, Ollama and LM Studio, and an Ollama ``Modelfile`` beside it.

The weights are the run's merged ones (``tunelab.runs.merge_run``), written with the ``gguf`` package's writer
under llama.cpp's names and metadata keys, as llama.cpp's own ``convert_hf_to_gguf.py`` writes them for
Llama, Mistral (as ``llama``), Qwen2 and Gemma 2. Everything a reader needs travels in the file: the
architecture, the tokenizer (byte-level BPE as ``gpt2``; SentencePiece-style BPE with byte fallback as
``llama``), the chat template the run was trained with, and ``general.*`` facts (name, the base model,
its licence); a classify run adds its label map (``tunelab.labels``).

Details that decide whether the round trip is exact:

- llama.cpp stores the query and key projections of Llama with the rows of each head interleaved
  for its rotary kernel (``permute`` in llama.cpp's ``convert_hf_to_gguf.py``); readers undo it
  (transformers' ``LlamaTensorProcessor._reverse_permute_weights``), so we apply it. Qwen2 and Gemma
  use the other rotary layout and are stored as they are.
- Gemma's RMS norms multiply by ``1 + weight``; llama.cpp stores ``1 + weight``.
- The output head is written only when it differs from the embedding matrix; readers take a file
  without ``output.weight`` as tied.
- Quantized files follow llama.cpp's choices per tensor (``gguf_quants.tensor_type``): a ``q4_K_M`` file
  keeps the output head and half of the value/down projections at 6 bits, and rows that are no
  multiple of 256 values fall back to the 32-value formats, as ``llama-quantize`` does.

Everything that can make an export fail (architecture, tokenizer, quantization) is checked before
the output file is opened, and the file appears under its name only once complete.
"""

from __future__ import annotations

import dataclasses
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
from tunelab.faults import kill_point
from tunelab.models.adapters import MergedRun
from tunelab.models.generate import Decoding
from tunelab.paths import (
    atomic_write_text,
    check_output_folder,
    disk_full_error,
    is_disk_full,
    remove_stale_temporaries,
    temporary_prefix,
)

QUANTS: tuple[str, ...] = ("f16", "q8_0", "q6_K", "q5_K_M", "q4_K_M", "q5_0", "q4_0")


@dataclass(frozen=True)
class Architecture:
    """How llama.cpp writes one transformers architecture."""

    gguf: str  # general.architecture
    tensor_names: str  # gguf.MODEL_ARCH member whose tensor name map applies
    permute_qk: bool  # Llama's rotary layout (q/k rows interleaved per head)
    norm_offset: float  # added to every RMS norm weight (Gemma multiplies by 1 + weight)


# transformers model_type -> how it is written. Only architectures whose tensor layout and metadata this
# module writes as llama.cpp does, and that transformers' GGUF reader reads back, are listed (each is
# tested that way); anything else fails before writing.
SUPPORTED_ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", "LLAMA", True, 0.0),
    # llama.cpp's converter writes Mistral as llama (LlamaModel handles MistralForCausalLM).
    "mistral": Architecture("llama", "LLAMA", True, 0.0),
    "qwen2": Architecture("qwen2", "QWEN2", False, 0.0),
    "gemma2": Architecture("gemma2", "GEMMA2", False, 1.0),
}
LABELS_KEY = "tunelab.labels"
TASK_KEY = "tunelab.task"
SYSTEM_PROMPT_KEY = "tunelab.system_prompt"
OUT_OF_SCOPE_KEY = "tunelab.out_of_scope"  # a classify run's out-of-scope rule (JSON), which llama.cpp does not apply
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"

# The Go-template form (Ollama) of the ChatML chat template: each message as
# <|im_start|>role\ncontent<|im_end|>\n, then the assistant turn opened. Ollama puts the Modelfile's
# SYSTEM first when a request brings no system message, as the Jinja template does with its default.
CHATML_GO_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def plain_go_template(answer: str, eos: str) -> str:
    """The Go-template form (Ollama) of the plain turns of a model without a chat template (``templates.render_chat``):
    each message a paragraph, each answer opened by ``answer`` and closed by ``eos`` as it was trained, then the answer
    opened. Ollama adds the BOS itself (the file's add_bos_token) and puts the Modelfile's SYSTEM first."""
    return (
        "{{- range $i, $m := .Messages }}{{ if $i }}\n\n{{ end }}"
        f'{{{{ if eq $m.Role "assistant" }}}}{answer}{{{{ $m.Content }}}}{eos}{{{{ else }}}}{{{{ $m.Content }}}}{{{{ end }}}}'
        f"{{{{ end }}}}\n\n{answer}"
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
    architecture: str = "llama"
    tensor_types: dict[str, int] | None = None  # ggml type name -> how many tensors are stored in it
    out_of_scope: dict | None = None  # the run's out-of-scope rule this file cannot apply, with its ``note``

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
            "architecture": self.architecture,
            "tensor_types": self.tensor_types,
            "out_of_scope": self.out_of_scope,
        }


@dataclass(frozen=True)
class _Tokenizer:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str | None
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None
    scores: list[float] | None = None
    add_space_prefix: bool = False
    ignore_merges: bool = False  # whole words are looked up in the vocabulary before merging (Llama 3)


def write_gguf(
    merged: MergedRun, out_path: str | Path, *, quant: str = "f16", ollama: bool = False, classify_instruction: str | None = None,
    plain_answer: str | None = None,
) -> GGUFExport:
    """Write a run's merged weights (``tunelab.runs.merge_run``) as one GGUF file at ``out_path`` (and a
    Modelfile beside it with ``ollama``). ``tunelab.runs.export_gguf`` merges a run folder and calls this.

    ``classify_instruction``: the instruction a classify run was trained with, shown in the Modelfile
    (the data layer owns the prompt, and models sits beside it, so the caller passes it in).
    ``plain_answer``: for a model without a chat template of its own, the words that open its answers
    (``templates.NO_TEMPLATE_ANSWER``), for the Modelfile's TEMPLATE (``plain_go_template``).

    Raises:
        ModelError: when the output exists, the architecture or tokenizer cannot be written as GGUF, or
            ``quant`` is unknown.
    """
    out = Path(out_path)
    check_targets(out, quant)
    for target in (out, modelfile_path(out)):
        remove_stale_temporaries(target)  # a killed export's half-written files (the GGUF: hundreds of MB)
    architecture = _architecture(merged.model.config)
    tokenizer = _tokenizer_metadata(merged)
    labels = merged.label_map
    state_dict = merged.state_dict
    answers: list[int] | None = None
    if labels:
        # A classify run answers with its label names: each label gets a token of its own (see _label_answers).
        state_dict, tokenizer, answers = _label_answers(state_dict, tokenizer, labels)
    tensors, tied = _gguf_tensors(state_dict, merged.model.config, quant, architecture)
    system_prompt = _system_prompt(merged.run_config)
    out_of_scope = {**merged.out_of_scope, "note": out_of_scope_note(merged.out_of_scope)} if merged.out_of_scope else None
    modelfile = modelfile_path(out) if ollama else None
    name = ollama_model_name(merged.name) if ollama else None
    modelfile_content = None
    if ollama:
        # The run saw its own system prompt, or the template's default one when it had none.
        system = system_prompt or default_system_prompt(tokenizer.chat_template, merged.tokenizer)
        task = str(merged.run_config.get("task", "run"))
        modelfile_content = modelfile_text(
            out, tokenizer.chat_template, system, labels, task, classify_instruction, named_answers=answers is not None,
            out_of_scope_note=out_of_scope["note"] if out_of_scope else None, decoding=merged.decoding,
            plain=(plain_answer, merged.tokenizer.eos_token or "") if plain_answer is not None else None,
        )

    from gguf import GGUFWriter

    # Written under a temporary name and renamed when complete: a reader never sees half a file.
    writer_target = _temporary_sibling(out)
    writer = GGUFWriter(str(writer_target), arch=architecture.gguf)
    try:
        _write_metadata(writer, merged, architecture, tokenizer, quant, system_prompt, answers)
        for tensor_name, data, raw_dtype in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        # mkstemp makes the file private (0600); an exported model is meant to be read by other tools.
        os.chmod(writer_target, _default_file_mode())
        if modelfile is not None and modelfile_content is not None:
            # The Modelfile before the GGUF: the GGUF in its place is what says the export is complete (it was renamed
            # first, and a kill before the Modelfile left it there without one, the same command refusing to run again).
            atomic_write_text(modelfile, modelfile_content)
            os.chmod(modelfile, _default_file_mode())
            kill_point("export.modelfile-written")
        os.replace(writer_target, out)
    except BaseException as error:
        try:
            writer.close()
        except OSError:
            pass  # closing flushes, which fails again on a full disk
        writer_target.unlink(missing_ok=True)
        if modelfile is not None and not out.exists():
            modelfile.unlink(missing_ok=True)  # written for this GGUF, which is not there
        if isinstance(error, Exception) and is_disk_full(error, out.parent):
            raise disk_full_error(out, sum(int(getattr(data, "nbytes", 0)) for _, data, _ in tensors)) from None
        raise
    counts: dict[str, int] = {}
    for _, data, raw_dtype in tensors:
        kind = raw_dtype.name if raw_dtype is not None else {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}[data.dtype]
        counts[kind] = counts.get(kind, 0) + 1
    return GGUFExport(
        path=out,
        quant=quant,
        size_bytes=out.stat().st_size,
        tensors=len(tensors),
        tied_output=tied,
        modelfile=modelfile,
        ollama_name=name,
        labels=list(labels["labels"]) if labels else None,
        architecture=architecture.gguf,
        tensor_types=counts,
        out_of_scope=out_of_scope,
    )


def _label_answers(
    state_dict: dict[str, torch.Tensor], tokenizer: _Tokenizer, labels: dict
) -> tuple[dict[str, torch.Tensor], _Tokenizer, list[int] | None]:
    """A classify run's weights and vocabulary with one answer token per label, spelled as the label's name.

    The run answers with one token per label (``A``, ``B``, ... or the label itself when it is one
    token); llama.cpp and Ollama print the token they pick, so a user would read codes. Each label gets
    a token spelled as its name, whose output row is the trained row of its code token; the code
    tokens keep their input rows (text that contains "A" reads as before) and their output rows become
    zero, so they no longer compete as answers. A new token is a normal vocabulary entry that no merge
    produces, so the tokenizer never makes it out of a user's text: the input side is unchanged. That
    holds for byte-level BPE vocabularies that apply their merges (SmolLM2, Qwen2); where a tokenizer
    looks whole words up first (``ignore_merges``, Llama 3) or is SentencePiece, the file keeps the codes
    (None), and the Modelfile lists what each one means.
    """
    if tokenizer.model != "gpt2" or tokenizer.ignore_merges:
        return state_dict, tokenizer, None
    from gguf import TokenType
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    embed = state_dict["model.embed_tokens.weight"]
    head = state_dict.get("lm_head.weight", embed).clone()
    codes = [int(i) for i in labels["token_ids"]]
    tokens, types = list(tokenizer.tokens), list(tokenizer.token_types)
    index = {token: position for position, token in enumerate(tokens)}
    answers: list[int] = []
    rows = head[codes].clone()  # the trained label rows, before any code row is cleared
    embed_rows = []
    for label, code in zip(labels["labels"], codes, strict=True):
        spelled = "".join(spelling[byte] for byte in str(label).encode("utf-8"))
        if spelled in index:
            answers.append(index[spelled])  # the label already is a token: it answers as itself
            continue
        answers.append(len(tokens))
        index[spelled] = len(tokens)
        tokens.append(spelled)
        types.append(int(TokenType.NORMAL))
        embed_rows.append(embed[code].clone())
    for code in codes:
        if code not in answers:
            head[code] = 0
    grown = len(tokens) - len(tokenizer.tokens)
    if grown:
        head = torch.cat([head, torch.zeros(grown, head.shape[1], dtype=head.dtype)])
    for row, answer in zip(rows, answers, strict=True):
        head[answer] = row
    updated = dict(state_dict)
    if grown:
        updated["model.embed_tokens.weight"] = torch.cat([embed, torch.stack(embed_rows)])
    updated["lm_head.weight"] = head
    return updated, dataclasses.replace(tokenizer, tokens=tokens, token_types=types), answers


def check_targets(out: Path, quant: str) -> None:
    if quant not in QUANTS:
        raise ModelError(f"--quant {quant!r} is not supported", f"use one of: {', '.join(QUANTS)}")
    # A Modelfile without its GGUF beside it is not refused: an export killed between writing the two left it
    # (write_gguf renames the GGUF last), and the same command run again replaces it.
    if out.exists():
        raise ModelError(f"{out} already exists; export never overwrites", "choose a new output name")
    check_output_folder(out)


def modelfile_path(gguf_path: Path) -> Path:
    """``model.gguf`` -> ``model.Modelfile``: one per export, so several exports can share a folder."""
    return gguf_path.with_suffix(".Modelfile")


def ollama_model_name(run_name: str) -> str:
    """A name ``ollama create`` accepts (lowercase letters, digits, '-', '_', '.')."""
    name = re.sub(r"[^a-z0-9._-]+", "-", run_name.lower()).strip("-._")
    return name or "tunelab-model"


# ------------------------------------------------------------------------------------------ checks


def _architecture(config: Any) -> Architecture:
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
            f"cannot export a {model_type} model with rope scaling {rope_type!r} to GGUF yet",
            "use `tunelab export --merge` for a transformers folder",
        )
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise ModelError("cannot export a qwen2 model that uses sliding-window attention to GGUF (llama.cpp has no such qwen2)")
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
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) or ``llama`` (SentencePiece-style BPE) vocabulary.

    Raises:
        ModelError: for any other kind of tokenizer, or one larger than the embedding matrix.
    """
    from gguf import TokenType

    tokenizer = merged.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("the run's tokenizer has no tokenizer.json (a fast tokenizer is needed for GGUF export)")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        kind = "gpt2"
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        # Llama 2, Mistral, Gemma: SentencePiece BPE as transformers' converters write it (pieces with "▁", <0xXX> bytes).
        kind = "llama"
    else:
        raise ModelError(
            "cannot export this tokenizer to GGUF: only byte-level BPE (GPT-2 style) and SentencePiece-style BPE "
            "with byte fallback are supported",
            f"the run's tokenizer is {model.get('type')} with pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')}",
        )
    vocab_rows = int(merged.model.config.vocab_size)
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_rows:
        raise ModelError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_rows} embedding rows"
        )
    by_id = {index: token for token, index in vocab.items()}
    added = {token.content: token for token in tokenizer.added_tokens_decoder.values()}
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges") or []]
    # SentencePiece merges the adjacent pair whose result scores highest: the earlier a merge, the higher its score.
    rank = {}
    for index, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1), index)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
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
        elif kind == "llama" and index == unk_id:
            tokens.append(token)
            types.append(int(TokenType.UNKNOWN))
        elif kind == "llama" and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            tokens.append(token)
            types.append(int(TokenType.BYTE))
        else:
            tokens.append(token)
            types.append(int(TokenType.NORMAL))
        scores.append(-float(rank[tokens[-1]]) if tokens[-1] in rank else 0.0)

    def token_id(name: str) -> int | None:
        value = getattr(tokenizer, f"{name}_token_id", None)
        return int(value) if value is not None else None

    probe = tokenizer("a")["input_ids"]
    bos = token_id("bos")
    described = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    return _Tokenizer(
        model=kind,
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=_pre_tokenizer_name(merged, spec) if kind == "gpt2" else None,
        bos_id=bos,
        eos_id=token_id("eos"),
        unk_id=token_id("unk"),
        pad_id=token_id("pad"),
        # What the tokenizer does on plain text, so llama.cpp adds a BOS exactly when transformers does.
        add_bos=bool(probe) and bos is not None and probe[0] == bos,
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
        scores=scores if kind == "llama" else None,
        ignore_merges=bool(model.get("ignore_merges")),
        # Llama and Mistral put "▁" before the text (a Prepend normalizer, or Metaspace prepending); Gemma does not.
        add_space_prefix=kind == "llama" and ('"Prepend"' in described or '"prepend_scheme": "first"' in described or '"prepend_scheme": "always"' in described),
    )


def _pre_tokenizer_name(merged: MergedRun, spec: dict) -> str:
    """llama.cpp's name for how text is split before BPE (``tokenizer.ggml.pre``).

    A run on a GGUF base (the default model) keeps its base's value: the tokenizer is the base's.
    Otherwise the split expression names it where transformers' GGUF reader knows it (Llama 3's
    "llama-bpe", "qwen2", Mistral's "tekken", ...); digits split one by one before a GPT-2 split is
    "smollm", and anything else "gpt2".
    """
    source = merged.base_source
    if source is not None and source.kind in ("default", "gguf"):
        # transformers' metadata reader skips the vocabulary arrays: 0.03 s where gguf's GGUFReader takes 8 s.
        from transformers.integrations.gguf import read_gguf_metadata

        pre = read_gguf_metadata(source.location)[0].get("tokenizer.ggml.pre")
        if isinstance(pre, str):
            return pre
    described = json.dumps(spec.get("pre_tokenizer"))
    expressions = re.findall(r'"Regex": ("(?:[^"\\]|\\.)*")', described)
    if expressions:
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:  # an older transformers: the reader matches nothing more specific
            GGUF_PRE_TOKENIZER_SPLITS = {}
        pattern = json.loads(expressions[0])
        # The names llama.cpp's converter gives each family first; other names share their expressions.
        for name in ("llama-bpe", "qwen2", "tekken", "gpt-4o", *GGUF_PRE_TOKENIZER_SPLITS):
            if GGUF_PRE_TOKENIZER_SPLITS.get(name) == pattern:
                return name
    if '"Digits"' in described and '"individual_digits": true' in described:
        return "smollm"
    return "gpt2"


# ----------------------------------------------------------------------------------------- tensors


def _llama_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: interleave the two rotary halves of each head.
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _gguf_tensors(
    state_dict: dict[str, torch.Tensor], config: Any, quant: str, architecture: Architecture
) -> tuple[list[tuple[str, np.ndarray, Any]], bool]:
    """(name, data, raw_dtype) for every tensor, in llama.cpp's names and types; and whether the head is tied.

    Raises:
        ModelError: for a weight llama.cpp has no name for, or one that cannot be quantized.
    """
    import gguf
    from gguf import GGMLQuantizationType, get_tensor_name_map
    from gguf.quants import QuantError, quantize

    from tunelab.models.gguf_quants import ENCODERS, tensor_type

    layers = int(config.num_hidden_layers)
    names = get_tensor_name_map(getattr(gguf.MODEL_ARCH, architecture.tensor_names), layers)
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
        if architecture.permute_qk and gguf_base.endswith(".attn_q"):
            data = _llama_permute(data, heads)
        elif architecture.permute_qk and gguf_base.endswith(".attn_k"):
            data = _llama_permute(data, kv_heads)
        if architecture.norm_offset and data.ndim == 1 and gguf_base.endswith("norm"):
            data = data + np.float32(architecture.norm_offset)
        if data.ndim == 1:
            # Norms and biases stay f32, as llama.cpp's converter keeps them: they are tiny and precision-critical.
            out.append((gguf_name, data, None))
            continue
        if quant == "f16":
            out.append((gguf_name, data.astype(np.float16), None))
            continue
        layer = int(gguf_base.split(".")[1]) if gguf_base.startswith("blk.") else None
        kind = tensor_type(quant, gguf_name, data.shape[-1], layer=layer, layers=layers, has_output=not tied)
        qtype = GGMLQuantizationType[kind]
        try:
            if kind in ENCODERS:
                from tunelab.models.gguf_quants import quantize_k

                packed = quantize_k(data, kind)
            else:
                packed = quantize(data, qtype)
        except (QuantError, ValueError) as error:
            raise ModelError(f"cannot quantize {hf_name} {tuple(data.shape)} to {kind}: {error}", "use --quant f16") from None
        out.append((gguf_name, packed, qtype))
    return out, tied


# ---------------------------------------------------------------------------------------- metadata


FILE_TYPES = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q6_K": "MOSTLY_Q6_K", "q5_K_M": "MOSTLY_Q5_K_M",
              "q4_K_M": "MOSTLY_Q4_K_M", "q5_0": "MOSTLY_Q5_0", "q4_0": "MOSTLY_Q4_0"}


def _write_metadata(
    writer: Any, merged: MergedRun, architecture: Architecture, tokenizer: _Tokenizer, quant: str,
    system_prompt: str | None, answers: list[int] | None,
) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    config = merged.model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    _write_general(writer, merged)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if architecture.gguf == "llama":
        writer.add_vocab_size(len(tokenizer.tokens))
        writer.add_rope_dimension_count(head_dim)
    elif architecture.gguf == "gemma2":
        # What llama.cpp's Gemma2Model writes; Gemma's head size is not hidden / heads.
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping or 0.0))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping or 0.0))
        writer.add_sliding_window(int(config.sliding_window))
    writer.add_file_type(int(getattr(LlamaFileType, FILE_TYPES[quant])))
    if quant != "f16":
        writer.add_quantization_version(GGML_QUANT_VERSION)

    writer.add_tokenizer_model(tokenizer.model)
    if tokenizer.pre is not None:
        writer.add_tokenizer_pre(tokenizer.pre)
    writer.add_token_list(tokenizer.tokens)
    if tokenizer.scores is not None:
        writer.add_token_scores(tokenizer.scores)
    writer.add_token_types(tokenizer.token_types)
    if tokenizer.merges:
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
    writer.add_add_space_prefix(tokenizer.add_space_prefix)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    writer.add_string(TASK_KEY, str(merged.run_config.get("task", "")))
    if system_prompt:
        writer.add_string(SYSTEM_PROMPT_KEY, system_prompt)
    if merged.label_map:
        labels = merged.label_map
        stored = {key: list(labels[key]) for key in ("labels", "token_ids", "token_strings")}
        # The token each label is answered with in this file: its name, or its code where the vocabulary keeps codes.
        stored["answer_ids"] = answers if answers is not None else stored["token_ids"]
        writer.add_string(LABELS_KEY, json.dumps(stored, ensure_ascii=False))
    if merged.out_of_scope:
        writer.add_string(OUT_OF_SCOPE_KEY, json.dumps(merged.out_of_scope, ensure_ascii=False))


def base_model_facts(merged: MergedRun) -> dict[str, Any]:
    """What is known about the run's base model: name, organization, repository, licence (absent keys unknown).

    From the base GGUF's own ``general.*`` keys (the default model), or a model folder's model card
    (``README.md`` front matter: ``license``, ``base_model``) and its hub id.
    """
    source = merged.base_source
    if source is None:
        # A full or freeze run holds its own weights: its base is the model its config names.
        from tunelab.models.resolve import resolve_model

        model = merged.run_config.get("model") or {}
        name = model.get("name") if isinstance(model, dict) else model
        try:
            source = resolve_model(str(name)) if name else None
        except ModelError:
            source = None
        if source is None or source.kind == "run":
            return {}
    facts: dict[str, Any] = {}
    if source.kind in ("default", "gguf"):
        from transformers.integrations.gguf import read_gguf_metadata

        metadata = read_gguf_metadata(source.location)[0]
        for key in ("name", "organization", "basename", "size_label", "license", "repo_url"):
            if isinstance(metadata.get(f"general.{key}"), str):
                facts[key] = metadata[f"general.{key}"]
        return facts
    facts["name"] = source.display_name
    if source.kind == "hub" and "/" in source.location:
        facts["organization"] = source.location.split("/")[0]
        facts["repo_url"] = f"https://huggingface.co/{source.location}"
    card = Path(source.location) / "README.md" if source.kind in ("folder", "hub") and Path(source.location).is_dir() else None
    if card is not None and card.is_file():
        import yaml

        text = card.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                front = {}
            if isinstance(front, dict) and isinstance(front.get("license"), str):
                facts["license"] = front["license"]
    return facts


def _write_general(writer: Any, merged: MergedRun) -> None:
    """``general.*``: the file is the run (its name), fine-tuned from the base (its name, maker, licence)."""
    base = base_model_facts(merged)
    writer.add_name(merged.name)
    writer.add_type("model")
    writer.add_finetune(merged.name)
    for key, add in (("basename", writer.add_basename), ("size_label", writer.add_size_label), ("organization", writer.add_organization)):
        if base.get(key):
            add(base[key])
    if base.get("license"):
        # A fine-tune is bound by its base model's licence.
        writer.add_license(base["license"])
    if base.get("name"):
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base["name"])
        if base.get("organization"):
            writer.add_base_model_organization(0, base["organization"])
        if base.get("repo_url"):
            writer.add_base_model_repo_url(0, base["repo_url"])
    task = str(merged.run_config.get("task", "") or "")
    writer.add_tags(["tunelab", *([f"tunelab-{task}"] if task else [])])


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temporary_sibling(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(out), suffix=".tmp", dir=out.parent)
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


def out_of_scope_note(rule: dict) -> str:
    """One line on a classify run's out-of-scope rule, which a GGUF file cannot apply (llama.cpp answers the most likely
    label token): that the file answers a category for every request, and how to apply the rule without tunelab."""
    below = f"the run answers `{rule['label']}` when {rule['score_is']} is below {rule['threshold']:.4f}"
    if rule["score"] == "probability":
        # The label answer tokens' logits are the run's calibrated label logits (the temperature is folded in).
        how = ("apply it yourself: divide each label answer token's probability by their sum, and compare the highest with the"
               f" threshold (key {OUT_OF_SCOPE_KEY} of this file)")
    else:
        how = ("that needs the request's final hidden state and the training requests' states, which this file does not"
               " hold: serve the run with `tunelab serve --model RUN` to apply it")
    return f"this file answers a category for every request (the out-of-scope rule is not applied): {below}; {how}"


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ModelError('the system prompt contains """, which a Modelfile cannot quote', "remove the triple quotes")
    return f'"""{text}"""'


def classify_go_template(instruction: str) -> str:
    """The Ollama template of a classify run: the user's message is the text, put into the prompt the run was trained on."""
    return (
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        f"<|im_start|>user\n{instruction}\n\nText: {{{{ .Prompt }}}}<|im_end|>\n<|im_start|>assistant\n"
    )


def modelfile_text(
    gguf_path: Path,
    chat_template: str | None,
    system: str | None,
    label_map: dict | None,
    task: str,
    classify_instruction: str | None = None,
    *,
    named_answers: bool = True,
    out_of_scope_note: str | None = None,
    decoding: Decoding | None = None,
    plain: tuple[str, str] | None = None,
) -> str:
    """An Ollama Modelfile for the exported file: FROM, TEMPLATE, stop tokens, SYSTEM, decoding, label notes.

    ``decoding``: the run's own (``runs.Run.decoding``, greedy when None), as its evaluation generated and as the merged
    folder's generation_config.json says: its temperature, top_p and answer length (num_predict). Ollama's own defaults
    (temperature 0.8, no answer length) would answer with samples nobody judged, longer than any judged answer.

    A classify run's template wraps the user's message in the instruction it was trained on, and the
    file answers with the label's name (``write_gguf`` gives each label an answer token), so
    ``ollama run NAME "my card never came"`` prints ``card_arrival``.

    ``plain``: (the words opening an answer, the EOS token) of a model trained without a chat template, whose
    TEMPLATE writes those plain turns (``plain_go_template``).
    """
    chatml = bool(chat_template) and CHATML_START in chat_template and CHATML_END in chat_template
    lines = [f"# Written by tunelab export ({task} run).", f"FROM ./{gguf_path.name}", ""]
    if chatml and label_map and classify_instruction:
        if '"""' in classify_instruction or "{{" in classify_instruction:
            raise ModelError("the classify instruction cannot be quoted in a Modelfile template")
        lines.append(f'TEMPLATE """{classify_go_template(classify_instruction)}"""')
    elif chatml:
        lines.append(f'TEMPLATE """{CHATML_GO_TEMPLATE}"""')
    elif plain:
        if any('"""' in part or "{{" in part for part in plain):
            raise ModelError("the plain prompt's words cannot be quoted in a Modelfile template")
        lines.append(f'TEMPLATE """{plain_go_template(*plain)}"""')
    else:
        lines.append("# No TEMPLATE: the chat template is not ChatML; Ollama derives one from the GGUF's")
        lines.append("# tokenizer.chat_template.")
    if chatml:
        lines.append(f'PARAMETER stop "{CHATML_END}"')
        lines.append(f'PARAMETER stop "{CHATML_START}"')
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    if not label_map:
        decoding = decoding or Decoding()
        lines += [f"PARAMETER temperature {decoding.temperature:g}", f"PARAMETER top_p {decoding.top_p:g}"]
        if decoding.max_new_tokens is not None:
            # The judged answer length, as the merged folder's file says: Ollama's own would answer past it.
            lines.append(f"PARAMETER num_predict {decoding.max_new_tokens}")
    if label_map:
        # A classify model answers with exactly one token (its label's name); greedy, like tunelab's own evaluation.
        lines += ["PARAMETER temperature 0", "PARAMETER num_predict 1", ""]
        if chatml and classify_instruction:
            lines.append("# Classify: send the text alone; the template puts it into the prompt the run was trained on:")
            lines.append(f"#   {classify_instruction}\\n\\nText: <your text>")
        elif classify_instruction:
            lines.append("# Classify: ask with the prompt the run was trained on:")
            lines.append(f"#   {classify_instruction}\\n\\nText: <your text>")
        if named_answers:
            lines.append("# It answers one of these labels:")
            lines += [f"#   {label}" for label in label_map["labels"]]
        else:
            lines.append("# It answers one token; what each one means:")
            lines += [f"#   {code!r} = {label}" for label, code in zip(label_map["labels"], label_map["token_strings"], strict=True)]
        if out_of_scope_note:
            lines.append(f"# {out_of_scope_note}")
    return "\n".join(lines) + "\n"
