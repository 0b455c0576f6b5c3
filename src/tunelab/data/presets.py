"""Named mappings from known public datasets' own layouts to tunelab records (``data.preset``).

Each preset reads the files exactly as their authors publish them and yields rows in tunelab's
field names (text/label, prompt/completion/references, chosen/rejected), which then go through the
same validation as a user's own rows. ``PRESETS`` is also the table in the README.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.formats import (
    RecordError,
    RowOrError,
    iter_csv,
    iter_json,
    iter_jsonl,
    read_bytes,
    repair_utf8,
    resolve_files,
)
from tunelab.errors import DataError

SCITLDR_INSTRUCTION = "Summarize this scientific paper abstract in one sentence (TL;DR)."
# tinyshakespeare is one 1.1 MB file: cut it into documents of about this many characters (whole
# speeches), so a test share can be held out and windows stay within one passage.
SHAKESPEARE_CHUNK_CHARS = 2000


@dataclass(frozen=True)
class Preset:
    name: str
    task: str
    pattern: str  # files read when the path is a folder (a glob below it)
    mapping: str  # how fields map, for people (README, `tunelab data presets`)
    rows: Callable[[Path], Iterator[RowOrError]]

    def files(self, path: str) -> list[Path]:
        """The files this preset reads at ``path`` (a file, or the matching files under a folder).

        Raises:
            DataError: when nothing matches.
        """
        candidate = Path(path).expanduser()
        if candidate.is_dir():
            files = sorted(candidate.glob(self.pattern), key=lambda p: p.relative_to(candidate).as_posix())
            files = [f for f in files if f.is_file()]
            if not files:
                raise DataError(f"{path}: no '{self.pattern}' files for preset '{self.name}'")
            return files
        return resolve_files(path)


def _passthrough(rows: Iterator[RowOrError], convert: Callable[[dict, str], dict | list[tuple[str, dict]]]) -> Iterator[RowOrError]:
    for source, row in rows:
        if isinstance(row, RecordError):
            yield source, row
            continue
        try:
            converted = convert(row, source)
        except (KeyError, TypeError, AttributeError, IndexError) as error:
            yield source, RecordError(source, f"does not fit the preset's layout ({type(error).__name__}: {error})")
            continue
        if isinstance(converted, list):
            yield from converted
        else:
            yield source, converted


def _banking77(path: Path) -> Iterator[RowOrError]:
    return _passthrough(iter_csv(path), lambda row, _: {"text": row["text"], "label": row["category"]})


def _snips(path: Path) -> Iterator[RowOrError]:
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # One SNIPS file stores emoji as UTF-8-encoded surrogate halves; pair them up, else Latin-1.
        text = repair_utf8(data) or data.decode("latin-1")

    def convert(row: dict, source: str) -> dict:
        return {"text": "".join(chunk["text"] for chunk in row["data"]).strip(), "label": intent}

    try:
        intent = next(iter(json.loads(text)), "")
    except (json.JSONDecodeError, TypeError):
        intent = ""  # iter_json reports the file as invalid JSON
    return _passthrough(iter_json(path, text), convert)


def _hwu64(path: Path) -> Iterator[RowOrError]:
    def convert(row: dict, _: str) -> dict:
        text = row["answer_from_user"].strip() or row["answer_from_anno"].strip()
        return {"text": text, "label": f"{row['scenario'].strip()}_{row['intent'].strip()}"}

    return _passthrough(iter_csv(path, ";"), convert)


def _decode(path: Path) -> str:
    from tunelab.data.formats import decode_text

    return decode_text(path, read_bytes(path))


def _fdr_speech(path: Path) -> Iterator[RowOrError]:
    text = _decode(path)
    lines = text.split("\n")
    first = 0
    if lines and lines[0].startswith("President:"):
        first = 1  # the speaker header is metadata, not speech
    while first < len(lines) and not lines[first].strip():
        first += 1
    yield f"{path}:{first + 1}", {"text": "\n".join(lines[first:]).strip()}


def _tinyshakespeare(path: Path) -> Iterator[RowOrError]:
    text = _decode(path)
    chunk: list[str] = []
    size = 0
    start = 1
    line = 1
    for block in re.split(r"(\n\s*\n)", text):
        if not block.strip():
            line += block.count("\n")
            continue
        if not chunk:
            start = line
        chunk.append(block)
        size += len(block)
        line += block.count("\n")
        if size >= SHAKESPEARE_CHUNK_CHARS:
            yield f"{path}:{start}", {"text": "\n\n".join(chunk)}
            chunk, size = [], 0
    if chunk:
        yield f"{path}:{start}", {"text": "\n\n".join(chunk)}


def instruction_prompt(instruction: str, given: str | None) -> str:
    """An instruction and its input as one prompt: the input after a blank line, when there is one (the convention
    of Self-Instruct and Alpaca, whose rows ``tunelab.data.read`` reads as they are)."""
    given = (given or "").strip()
    return f"{instruction.strip()}\n\n{given}" if given else instruction.strip()


def _self_instruct(path: Path) -> Iterator[RowOrError]:
    def convert(row: dict, source: str) -> list[tuple[str, dict]]:
        instances = row["instances"]
        result = []
        for number, instance in enumerate(instances, start=1):
            prompt = instruction_prompt(row["instruction"], instance.get("input"))
            where = source if len(instances) == 1 else f"{source}#{number}"
            result.append((where, {"prompt": prompt, "completion": instance["output"]}))
        return result

    return _passthrough(iter_jsonl(path), convert)


def _scitldr(path: Path) -> Iterator[RowOrError]:
    def convert(row: dict, _: str) -> dict:
        references = [t.strip() for t in row["target"] if isinstance(t, str) and t.strip()]
        converted = {"prompt": f"{SCITLDR_INSTRUCTION}\n\n{' '.join(row['source']).strip()}"}
        if references:
            converted["completion"] = references[0]
            converted["references"] = references
        return converted

    return _passthrough(iter_jsonl(path), convert)


def _gsm8k(path: Path) -> Iterator[RowOrError]:
    return _passthrough(iter_jsonl(path), lambda row, _: {"prompt": row["question"], "completion": row["answer"]})


def _hh_rlhf(path: Path) -> Iterator[RowOrError]:
    return _passthrough(iter_jsonl(path), lambda row, _: {"chosen": row["chosen"], "rejected": row["rejected"]})


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in [
        Preset("banking77", "classify", "*.csv", "CSV `text` → text, `category` → label", _banking77),
        Preset(
            "snips",
            "classify",
            "**/train_*.json",
            "JSON per intent `{Intent: [{data: [{text}, ...]}]}`: chunks joined → text, the intent → label "
            "(a folder reads `train_*.json`; give `**/validate_*.json` for the validation files)",
            _snips,
        ),
        Preset(
            "hwu64",
            "classify",
            "**/*.csv",
            "one `;`-CSV per intent: `answer_from_user` → text, `<scenario>_<intent>` → label",
            _hwu64,
        ),
        Preset("fdr_speeches", "text", "**/*.txt", "one speech per `.txt` → text, without the `President: ...` line", _fdr_speech),
        Preset(
            "tinyshakespeare",
            "text",
            "*.txt",
            f"the play text cut at blank lines into documents of about {SHAKESPEARE_CHUNK_CHARS} characters → text",
            _tinyshakespeare,
        ),
        Preset(
            "self_instruct",
            "sft",
            "*.jsonl",
            "JSONL: `instruction` + `instances[].input` → prompt, `instances[].output` → completion (one record per instance)",
            _self_instruct,
        ),
        Preset(
            "scitldr",
            "sft",
            "train.jsonl",
            f"JSONL: '{SCITLDR_INSTRUCTION}' + `source` sentences joined → prompt, `target[0]` → completion, "
            "all of `target` → references",
            _scitldr,
        ),
        Preset("gsm8k", "sft", "*.jsonl", "JSONL `question` → prompt, `answer` (worked solution, `#### n`) → completion", _gsm8k),
        Preset(
            "hh_rlhf",
            "preference",
            "*.jsonl*",
            "JSONL(.gz) `chosen`/`rejected` dialogues → shared turns = prompt, last assistant turns = chosen/rejected",
            _hh_rlhf,
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        DataError: naming the known presets when ``name`` is not one.
    """
    if name not in PRESETS:
        raise DataError(f"unknown data preset '{name}'", f"use one of: {', '.join(PRESETS)}")
    return PRESETS[name]
