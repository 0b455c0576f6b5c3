"""Read rows out of files as they are: JSONL, JSON, CSV, TSV, Parquet and TXT, each possibly gzipped;
Arrow files and folders written by Hugging Face ``datasets`` (``save_to_disk``); and documents as a person writes them
(Markdown and other markup, HTML, Word .docx, PDF), each file one document as a .txt file is.

Every row comes with its ``source`` (``file:line``; for Parquet the row number) so that each problem
can be reported where the user can fix it. A row that cannot be read (invalid JSON, undecodable
bytes, a wrong number of CSV columns, more bytes than ``max_record_bytes``, JSON nested deeper than
Python can parse) comes out as a ``RecordError`` in its place instead of stopping the read: one pass
finds every problem. A file written in an 8-bit code page (Excel's "CSV" on Windows) is one error, not one
per accented line. Rows are yielded lazily, so a large JSONL file is read in bounded memory, and an
oversized line is skipped without being held in memory.
"""

from __future__ import annotations

import codecs
import csv
import glob as globbing
import gzip
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
    ".text": "txt",
    ".arrow": "arrow",
    # Markup a person writes in is read as written, exactly as .txt: the markup is part of how they write.
    ".md": "txt",
    ".markdown": "txt",
    ".rst": "txt",
    ".org": "txt",
    ".tex": "txt",
    ".html": "html",
    ".htm": "html",
    ".docx": "docx",
    ".pdf": "pdf",
}
# The formats whose file is one document (a row {"text": ...}): raw text, which only the 'text' task reads.
DOCUMENT_FORMATS = ("txt", "html", "docx", "pdf")
# An HTML file may be this many times data.max_record_bytes before its text is extracted (the limit itself applies to
# the text): a saved web page's scripts and styles are often most of its bytes, and they are no part of the record.
HTML_MARKUP_ALLOWANCE = 16
# What ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` leave in a folder besides the Arrow
# shards: metadata, never rows.
SAVED_DATASET_FILES = ("state.json", "dataset_info.json")
SAVED_DATASET_DICT_FILE = "dataset_dict.json"


@dataclass(frozen=True)
class RecordError:
    """One record that cannot be used: where it is (``file:line``) and why; or, with ``rows``, a whole file's rows that
    fail for one reason (``source`` the file: a header without a field is one error, not one per row)."""

    source: str
    reason: str
    rows: int = 1

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def invalid_records(errors: Iterable[RecordError]) -> int:
    """How many records ``errors`` make unusable (a file-wide error counts each of its rows)."""
    return sum(error.rows for error in errors)


Row = dict[str, Any]
RowOrError = tuple[str, Row | RecordError]

DEFAULT_MAX_RECORD_BYTES = 4_000_000  # data.max_record_bytes
UTF8_BOM = b"\xef\xbb\xbf"


def too_large(size: int, limit: int) -> str:
    """The reason given for a record over ``data.max_record_bytes``."""
    return f"record too large: more than {limit:,} bytes ({size:,}+); raise data.max_record_bytes to read it"


def too_deep() -> str:
    return "invalid JSON: nested too deeply (thousands of levels of [ or {)"


def format_by_name(path: Path) -> str | None:
    """The format ``path``'s extension names (looking through .gz), or None for an extension tunelab does not read."""
    return FORMAT_BY_SUFFIX.get(Path(path.name.lower().removesuffix(".gz")).suffix)


def detect_format(path: Path, declared: str = "auto") -> str:
    """The format of ``path``: ``declared`` unless 'auto', else by extension (looking through .gz).

    Raises:
        DataError: when the extension is not one tunelab reads.
    """
    if path.is_dir() and is_saved_dataset(path):
        return "hf_disk"
    if declared != "auto":
        return declared
    kind = format_by_name(path)
    if kind is not None:
        return kind
    suffix = Path(path.name.lower().removesuffix(".gz")).suffix
    raise DataError(
        f"{path}: cannot tell the format from the extension '{suffix or '(none)'}'",
        "use .jsonl, .json, .csv, .tsv, .parquet, .arrow, .txt (optionally .gz), a document (.md, .html, .docx, .pdf; "
        "text task), a saved Hugging Face dataset folder, or set data.format",
    )


def open_binary(path: Path) -> io.BufferedIOBase:
    """Open a file for reading bytes, decompressing ``.gz`` on the fly."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def read_bytes(path: Path) -> bytes:
    with open_binary(path) as handle:
        return handle.read()


def _undecodable(error: UnicodeDecodeError) -> str:
    return f"undecodable bytes: not UTF-8 text (byte 0x{error.object[error.start]:02x} at byte {error.start + 1})"


def repair_utf8(data: bytes) -> str | None:
    """Decode UTF-8 that encodes emoji as surrogate pairs (CESU-8, seen in SNIPS), or None if not that."""
    try:
        text = data.decode("utf-8", "surrogatepass")
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:
        return None


def bounded_lines(handle: io.BufferedIOBase, limit: int) -> Iterator[tuple[bytes | None, int]]:
    """``(line, size)`` for each line of a binary file; ``line`` is None for a line longer than ``limit``
    bytes, which is read past in chunks and never held whole in memory."""
    while True:
        raw = handle.readline(limit + 1)
        if not raw:
            return
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        size = len(raw)
        while raw and not raw.endswith(b"\n"):
            raw = handle.readline(1 << 20)
            size += len(raw)
        yield None, size


def iter_jsonl(path: Path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RowOrError]:
    """One JSON object per line; blank lines are allowed and skipped, and so is a UTF-8 BOM at the start.

    A file that holds one JSON array is read as JSON: written with indentation (``json.dump(rows, f, indent=2)``,
    its first line opens the array) or on one line (``json.dump(rows, f)``, the file's only line).
    """
    if _holds_one_json_array(path):
        # Line by line, "[" and each "}," would fail while the last object alone was accepted; a one-line array
        # would be one record of the wrong type (or "too large"), and no rows.
        yield from iter_json(path, max_record_bytes=max_record_bytes)
        return
    with open_binary(path) as handle:
        for number, (raw, size) in enumerate(bounded_lines(handle, max_record_bytes), start=1):
            source = f"{path}:{number}"
            if raw is None:
                yield source, RecordError(source, too_large(size, max_record_bytes))
                continue
            if raw.startswith(UTF8_BOM):
                # Written by Windows editors, and kept where files were joined with `cat`: invisible, no part of the JSON.
                raw = raw[len(UTF8_BOM):]
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield source, RecordError(source, _undecodable(error))
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                yield source, RecordError(source, _invalid_json_line(line, error))
                continue
            except RecursionError:
                yield source, RecordError(source, too_deep())
                continue
            if not isinstance(value, dict):
                yield source, RecordError(source, f"wrong type: expected a JSON object, got {_json_type(value)}")
                continue
            yield source, value


def _invalid_json_line(line: str, error: json.JSONDecodeError) -> str:
    """Why a JSON Lines line is not JSON; a line copied out of a JSON array (its object, then a comma) says so."""
    if error.msg == "Extra data" and line[error.pos :].strip() == ",":
        return f"invalid JSON: a ',' after the object (column {error.colno}); JSON Lines has one object per line and no commas between them"
    return f"invalid JSON: {error.msg} (column {error.colno})"


def _holds_one_json_array(path: Path) -> bool:
    """Whether a JSON Lines file really holds one JSON array: its first non-blank line opens one it does not close,
    or starts one and is the only line. A first line that is a whole array followed by more lines is a bad line of
    real JSON Lines (read as an array, the lines after it would be lost)."""
    with open_binary(path) as handle:
        first = b""
        while not first.strip():
            first = handle.readline(4096)  # only the start of a long line: an array's opening is at its start
            if not first:
                return False
            first = first.removeprefix(UTF8_BOM)
        if not first.lstrip().startswith(b"["):
            return False
        if first.endswith(b"\n") and not first.rstrip().endswith(b"]"):
            return True  # "[" alone, or "[{...}," on the first line: an indented array
        rest_of_first = not first.endswith(b"\n")  # a line longer than 4096 bytes (or one with no newline)
        for raw, _ in bounded_lines(handle, 1 << 20):  # one item per line, a long one never held whole
            if rest_of_first:
                rest_of_first = False
            elif raw is None or raw.strip():
                return False
        return True


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _line_counter(text: str) -> Any:
    """A function pos -> 1-based line number, counting newlines incrementally (positions only grow)."""
    state = {"pos": 0, "line": 1}

    def line_at(pos: int) -> int:
        state["line"] += text.count("\n", state["pos"], pos)
        state["pos"] = pos
        return state["line"]

    return line_at


def iter_json_array(
    text: str, start: int, path: Path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[RowOrError]:
    """The elements of the JSON array opening at ``text[start] == '['``, each with its line number.

    A syntax error inside an array cannot be resynchronised: it is reported once, at its line.
    """
    decoder = json.JSONDecoder()
    line_at = _line_counter(text)
    whitespace = re.compile(r"[ \t\n\r]*")
    pos = whitespace.match(text, start + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        source = f"{path}:{line_at(pos)}"
        began = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            where = f"{path}:{error.lineno}"
            yield where, RecordError(where, f"invalid JSON: {error.msg} (column {error.colno}); the rest of the file is unread")
            return
        except RecursionError:
            yield source, RecordError(source, too_deep() + "; the rest of the file is unread")
            return
        if pos - began > max_record_bytes:  # characters, at least as many bytes
            yield source, RecordError(source, too_large(pos - began, max_record_bytes))
        elif isinstance(value, dict):
            yield source, value
        else:
            yield source, RecordError(source, f"wrong type: expected a JSON object, got {_json_type(value)}")
        pos = whitespace.match(text, pos).end()
        if text.startswith(",", pos):
            pos = whitespace.match(text, pos + 1).end()
            continue
        if text.startswith("]", pos):
            return
        where = f"{path}:{line_at(pos)}"
        yield where, RecordError(where, "invalid JSON: expected ',' or ']' in the array; the rest of the file is unread")
        return


def decode_text(path: Path, data: bytes) -> str:
    """Decode a whole file as UTF-8 (a BOM is dropped).

    Raises:
        DataError: naming the line of the first undecodable byte.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}:{line}: {_undecodable(error)}", "save the file as UTF-8") from None


def iter_json(path: Path, text: str | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RowOrError]:
    """A JSON file: an array of objects, an object wrapping one array (``{"data": [...]}``), or one object.

    A ``.json`` file that really holds one object per line is read as JSONL.
    """
    if text is None:
        data = read_bytes(path)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            yield f"{path}:{line}", RecordError(f"{path}:{line}", _undecodable(error) + "; the file is unread")
            return
    stripped = text.lstrip()
    offset = len(text) - len(stripped)
    if stripped.startswith("["):
        yield from iter_json_array(text, offset, path, max_record_bytes)
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            yield from iter_jsonl(path, max_record_bytes)
            return
        where = f"{path}:{error.lineno}"
        yield where, RecordError(where, f"invalid JSON: {error.msg} (column {error.colno}); the file is unread")
        return
    except RecursionError:
        yield f"{path}:1", RecordError(f"{path}:1", too_deep() + "; the file is unread")
        return
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if len(value) == 1 and lists:
            # {"key": [...]}: find where the array starts so each element keeps its line number.
            match = re.match(r"\s*\{\s*" + re.escape(json.dumps(lists[0], ensure_ascii=False)) + r"\s*:\s*\[", text)
            if match:
                yield from iter_json_array(text, match.end() - 1, path, max_record_bytes)
            else:
                for index, item in enumerate(value[lists[0]], start=1):
                    source = f"{path}:#{index}"
                    yield source, item if isinstance(item, dict) else RecordError(source, "wrong type: expected a JSON object")
            return
        if len(text) > max_record_bytes:
            yield f"{path}:1", RecordError(f"{path}:1", too_large(len(text), max_record_bytes))
        else:
            yield f"{path}:1", value
        return
    yield f"{path}:1", RecordError(f"{path}:1", f"wrong type: expected a JSON array or object, got {_json_type(value)}")


def _sniff_delimiter(header: str, declared: str | None) -> str:
    if declared:
        return declared
    # The header line decides: the candidate that splits it most ("," for CSV, ";" for HWU64, ...).
    candidates = [",", ";", "\t", "|"]
    return max(candidates, key=lambda c: (header.count(c), -candidates.index(c)))


def iter_csv(path: Path, delimiter: str | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RowOrError]:
    """A delimited file with a header row; the delimiter is the one a first line ``sep=X`` names (Excel's), else the
    one given, else sniffed from the header.

    Each row's source is the line it starts on (quoted cells may span lines).
    """
    bad_lines: set[int] = set()
    # The csv module refuses a cell over 131,072 characters by default; the user's cap is max_record_bytes
    # (a larger cell is reported as too large below). The limit is process-wide, so it is only ever raised.
    csv.field_size_limit(max(csv.field_size_limit(), max_record_bytes + 1))

    def raw_lines(handle: io.BufferedIOBase) -> Iterator[bytes]:
        first = handle.readline()
        if b"\r" in first.rstrip(b"\r\n"):
            # Lines ended by a bare \r (Excel for Mac's "CSV (Macintosh)"): one readline held the whole file.
            yield from (first + handle.read()).splitlines(keepends=True)
            return
        if first:
            yield first
        yield from handle

    def lines() -> Iterator[str]:
        with open_binary(path) as handle:
            for number, raw in enumerate(raw_lines(handle), start=1):
                try:
                    # Each file's BOM, where exports were joined with `cat`: else the header repeated would not be
                    # told from a record, and a row's first cell would start with an invisible character.
                    yield raw.decode("utf-8-sig" if number == 1 or raw.startswith(UTF8_BOM) else "utf-8")
                except UnicodeDecodeError as error:
                    bad_lines.add(number)
                    if number <= 2:  # the header's line (the second after a 'sep=' line)
                        header_errors[number] = error
                    yield raw.decode("utf-8", "replace")

    header_errors: dict[int, UnicodeDecodeError] = {}
    stream = lines()
    header_line = next(stream, None)
    header_at = 1
    separator = re.fullmatch(r"sep=(.)", header_line.rstrip("\r\n")) if header_line is not None else None
    if separator:
        # Excel's first line 'sep=;' names the separator (it writes and honours it): the header is the next line.
        delimiter, header_line, header_at = separator.group(1), next(stream, None), 2
    if header_line is None:
        return
    if header_at in header_errors:
        # Column names with replacement characters would fail every row as a missing field.
        source = f"{path}:{header_at}"
        reason = _undecodable(header_errors[header_at]).replace(":", " in the header:", 1)
        yield source, RecordError(source, f"{reason}; save the file as UTF-8; the file is unread")
        return
    delimiter = _sniff_delimiter(header_line, delimiter)
    try:
        header = [name.strip() for name in next(csv.reader([header_line], delimiter=delimiter))]
    except csv.Error as error:
        raise DataError(f"{path}:{header_at}: invalid CSV header: {error}") from None
    twice = next((name for name in header if name and header.count(name) > 1), None)
    if twice is not None:
        # A row is a dict: it would keep the last of the two columns, read without a word. Empty names (a
        # spreadsheet's trailing empty columns) name no field and may repeat.
        columns = [str(number) for number, name in enumerate(header, start=1) if name == twice]
        times = "twice" if len(columns) == 2 else f"{len(columns)} times"
        source = f"{path}:{header_at}"
        yield source, RecordError(
            source,
            f"the header names the column '{twice}' {times} (columns {', '.join(columns[:-1])} and {columns[-1]}): "
            "which one to read cannot be told; rename one; the file is unread",
        )
        return

    record_lines: list[str] = []  # the lines of the record being read

    def rest() -> Iterator[str]:
        for line in stream:
            record_lines.append(line)
            yield line

    reader = csv.reader(rest(), delimiter=delimiter)
    previous_end = header_at
    while True:
        record_lines.clear()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            source = f"{path}:{previous_end + 1}"
            too_long = "field larger than field limit" in str(error)
            yield source, RecordError(source, too_large(max_record_bytes + 1, max_record_bytes) if too_long else f"invalid CSV: {error}")
            previous_end = reader.line_num + header_at
            continue
        start, end = previous_end + 1, reader.line_num + header_at
        previous_end = end
        source = f"{path}:{start}"
        if not cells or all(not cell.strip() for cell in cells):
            continue
        if any(start <= line <= end for line in bad_lines):
            yield source, RecordError(source, "undecodable bytes: not UTF-8 text")
            continue
        if end > start:
            # The lenient reader ends a quoted cell at any later quote (or at the end of the file), so one
            # unbalanced quote turns the next rows into one record; a well-formed multi-line cell reads strictly.
            try:
                list(csv.reader(record_lines, delimiter=delimiter, strict=True))
            except csv.Error as error:
                reason = f"invalid CSV: a quoted cell runs from line {start} to line {end} ({error}); is a quote unbalanced?"
                yield source, RecordError(source, reason)
                continue
        size = sum(len(cell) for cell in cells)
        if size > max_record_bytes:
            yield source, RecordError(source, too_large(size, max_record_bytes))
            continue
        if len(cells) != len(header):
            yield source, RecordError(source, f"wrong number of columns: expected {len(header)} ({delimiter!r}-separated), got {len(cells)}")
            continue
        if [cell.strip() for cell in cells] == header:
            # Exports joined with `cat`: read as a row, the header would be a record (a class named after the column).
            yield source, RecordError(source, "the header row again (files joined into one?): not a record")
            continue
        yield source, dict(zip(header, cells, strict=True))


def iter_parquet(path: Path) -> Iterator[RowOrError]:
    """Rows of a Parquet file, read in batches; the source is ``file:row``.

    A file written by ``datasets`` (``to_parquet``, the Hub's parquet files) gives its class-label columns as
    their names, as a ``save_to_disk`` folder does: its schema keeps the names under the "huggingface" key.
    """
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    names: dict[str, Any] = {}
    if b"huggingface" in (parquet.schema_arrow.metadata or {}):  # only then is the slow datasets import worth it
        from datasets import Features

        try:
            names = class_labels(Features.from_arrow_schema(parquet.schema_arrow))
        except Exception:  # damaged or foreign metadata: the integers as written, as in any other parquet file
            names = {}
    number = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield f"{path}:{number}", with_label_names(row, names)


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``datasets``' ``save_to_disk`` (one dataset, or a dict of splits)."""
    return (folder / SAVED_DATASET_DICT_FILE).is_file() or all((folder / name).is_file() for name in SAVED_DATASET_FILES)


def class_labels(features: Any) -> dict[str, Any]:
    """The class-label columns of ``datasets`` features: column -> its ``ClassLabel``."""
    from datasets import ClassLabel

    return {column: feature for column, feature in features.items() if isinstance(feature, ClassLabel)}


def with_label_names(row: Row, names: dict[str, Any]) -> Row:
    """``row`` with each class-label column's integer as its name (what a label file holds)."""
    for column, feature in names.items():
        if isinstance(row.get(column), int) and 0 <= row[column] < feature.num_classes:
            row[column] = feature.int2str(row[column])
    return row


def dataset_rows(dataset: Any, where: Path | str) -> Iterator[RowOrError]:
    """Rows of a ``datasets.Dataset``, in batches; class-label columns as their names (what a label file holds)."""
    names = class_labels(dataset.features)
    number = 0
    for batch in dataset.iter(batch_size=4096):
        columns = list(batch)
        for values in zip(*(batch[column] for column in columns), strict=True):
            number += 1
            yield f"{where}:{number}", with_label_names(dict(zip(columns, values, strict=True)), names)


def iter_saved_dataset(folder: Path) -> Iterator[RowOrError]:
    """A ``save_to_disk`` folder through ``datasets.load_from_disk``; of a dict of splits, its ``train`` split.

    Raises:
        DataError: when the folder cannot be loaded, or holds splits and none is ``train``.
    """
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as error:  # datasets raises several types for a damaged or foreign folder
        raise DataError(f"{folder}: not a readable saved Hugging Face dataset ({str(error).splitlines()[0]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            splits = ", ".join(loaded)
            raise DataError(
                f"{folder} holds the splits {splits} and none is 'train'",
                f"give one split's folder, e.g. {folder / next(iter(loaded))}",
            )
        yield from dataset_rows(loaded["train"], folder / "train")
        return
    yield from dataset_rows(loaded, folder)


def iter_arrow(path: Path) -> Iterator[RowOrError]:
    """Rows of an Arrow file: the stream format ``datasets`` writes (its cache and shards) or the IPC file format.

    Raises:
        DataError: for a compressed or unreadable file.
    """
    import datasets
    import pyarrow as pa

    if path.name.lower().endswith(".gz"):
        raise DataError(f"{path}: Arrow files are read memory-mapped and cannot be gzipped", "decompress it first")
    try:
        dataset = datasets.Dataset.from_file(str(path))
    except Exception:  # not the stream format: try Arrow's file format before giving up
        try:
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Arrow file ({error})") from None
        dataset = datasets.Dataset(table)
    yield from dataset_rows(dataset, path)


def _document_name(path: Path) -> str:
    """How an error names the kind of document: its extension ('.md', '.pdf'), as the user knows the file."""
    return Path(path.name.lower().removesuffix(".gz")).suffix or "text"


def _text_file(path: Path, read_limit: int) -> str | RecordError:
    """A text file's content decoded (UTF-8, a BOM dropped, line ends as "\\n"), or why not: the one home of that
    decoding for every document read as text (.txt, Markdown and other markup, HTML). More than ``read_limit`` bytes is
    an error, found without reading past them."""
    with open_binary(path) as handle:
        data = handle.read(read_limit + 1)
    if len(data) > read_limit:
        return RecordError(f"{path}:1", too_large(len(data), read_limit) + f" (one {_document_name(path)} file is one document: one record)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return RecordError(f"{path}:{line}", _undecodable(error))
    # Line ends as Python's text mode reads them: a document saved on Windows (CRLF) or old Mac (CR) trained the model
    # on carriage returns it then wrote, and read as another record than the same text saved on Linux.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def iter_txt(path: Path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RowOrError]:
    """A plain-text file is one document: a row ``{"text": ...}``.

    Markdown, reStructuredText, Org and LaTeX files are read here too, as written: their markup is part of how the
    person writes, and a model tuned on their notes should write it as they do.
    """
    text = _text_file(path, max_record_bytes)
    if isinstance(text, RecordError):
        yield text.source, text
        return
    yield f"{path}:1", {"text": text}


def _extracted(path: Path, text: str, max_record_bytes: int) -> RowOrError:
    """The row of a document's extracted text, or the error of one over ``max_record_bytes`` (checked on the text,
    not on the file: a .docx is zipped, a PDF or HTML file carries bytes that are no text)."""
    source = f"{path}:1"
    size = len(text.encode("utf-8"))
    if size > max_record_bytes:
        return source, RecordError(source, too_large(size, max_record_bytes) + f" (the text of one {_document_name(path)} file is one document: one record)")
    return source, {"text": text}


class _VisibleText(HTMLParser):
    """The text an HTML page shows: no tags, scripts, styles or title; entities decoded; each block (paragraph,
    heading, list item, ...) its own paragraph, ``<br>`` a line break, ``<pre>`` kept as written, other whitespace
    collapsed as a browser collapses it."""

    HIDDEN = frozenset({"script", "style", "title", "template", "noscript"})
    BLOCKS = frozenset(
        "address article aside blockquote body caption dd details div dl dt fieldset figcaption figure footer form h1 h2 "
        "h3 h4 h5 h6 header hr html li main nav ol p pre section summary table tbody thead tfoot tr ul".split()
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.lines: list[list[str]] = [[]]
        self.hidden = 0
        self.pre = 0

    def _flush(self) -> None:
        if self.pre:
            text = "".join(chunk for line in self.lines for chunk in line).strip("\n")
        else:
            # HTML's whitespace is ASCII's only: a no-break space is text the page shows.
            collapsed = (re.sub(r"[ \t\n\r\f]+", " ", "".join(line)).strip(" ") for line in self.lines)
            text = "\n".join(line for line in collapsed if line)
        if text.strip():
            self.paragraphs.append(text)
        self.lines = [[]]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag == "br":
            self.lines.append([])
        elif tag in ("td", "th"):
            self.lines[-1].append(" ")
        elif tag in self.BLOCKS:
            self._flush()
            self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self._flush()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.lines[-1].append(data)

    def text(self) -> str:
        self._flush()
        return "\n\n".join(self.paragraphs)


def iter_html(path: Path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RowOrError]:
    """An HTML page is one document: the text it shows (see ``_VisibleText``), paragraphs separated by a blank line.

    The file is decoded as a .txt file is (UTF-8); ``max_record_bytes`` applies to the extracted text, and the file may
    be ``HTML_MARKUP_ALLOWANCE`` times larger for its markup.
    """
    page = _text_file(path, max_record_bytes * HTML_MARKUP_ALLOWANCE)
    if isinstance(page, RecordError):
        yield page.source, page
        return
    parser = _VisibleText()
    parser.feed(page)
    parser.close()
    yield _extracted(path, parser.text(), max_record_bytes)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _docx_text(path: Path) -> str:
    """A Word document's paragraphs and tables in document order, a blank line between them; a table is one line per
    row, its cells separated by tabs (a merged cell once). Headers, footers, footnotes, comments, text boxes and tables
    nested inside a cell are left out: python-docx reads the body."""
    import docx
    from docx.table import Table

    with open_binary(path) as handle:
        document = docx.Document(io.BytesIO(handle.read()))
    blocks = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = []
            for row in block.rows:
                cells = list({id(cell._tc): cell.text for cell in row.cells}.values())  # a merged cell is one cell
                rows.append("\t".join(cells))
            blocks.append("\n".join(rows))
        else:
            blocks.append(block.text)
    # An empty paragraph is spacing in Word, not a paragraph of text.
    return "\n\n".join(block for block in blocks if block.strip()).replace("\r\n", "\n").replace("\r", "\n")


def iter_docx(path: Path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RowOrError]:
    """A Word .docx document is one document (see ``_docx_text``); a file python-docx cannot open is one error."""
    source = f"{path}:1"
    try:
        text = _docx_text(path)
    except Exception as error:  # python-docx raises several types (zip, XML, missing part) for a damaged file
        yield source, RecordError(source, f"not a readable Word document (.docx): {_first_line(error)}")
        return
    yield _extracted(path, text, max_record_bytes)


def _pdf_text(path: Path, max_record_bytes: int) -> str | RecordError:
    """A PDF's text layer, page by page in order, a blank line between pages; reading stops once the text is past
    ``max_record_bytes``."""
    from pypdf import PdfReader

    source = f"{path}:1"
    with open_binary(path) as handle:
        reader = PdfReader(io.BytesIO(handle.read()))
    if reader.is_encrypted:
        try:
            opened = bool(reader.decrypt(""))  # only an owner password (printing, copying limits): any viewer opens it
        except Exception:  # AES without the cryptography package, or a damaged encryption dictionary
            opened = False
        if not opened:
            return RecordError(source, "encrypted: the PDF needs a password to open; save a copy without one to read it")
    pages: list[str] = []
    size = 0
    for page in reader.pages:
        text = (page.extract_text() or "").replace("\r\n", "\n").replace("\r", "\n").strip()
        size += len(text.encode("utf-8"))
        pages.append(text)
        if size > max_record_bytes:
            break
    text = "\n\n".join(page for page in pages if page)
    if not text:
        return RecordError(source, f"no text layer: a scanned PDF needs OCR first ({len(reader.pages)} page(s), no text on any)")
    return text


def iter_pdf(path: Path, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RowOrError]:
    """A PDF is one document: its text layer (see ``_pdf_text``). A scan (no text layer), a PDF that needs a password,
    or one pypdf cannot parse is one error naming the file, never an empty document."""
    source = f"{path}:1"
    # pypdf logs what it repairs or gives up on ("EOF marker not found") straight to stderr, beside the report that
    # already names the file and why: quiet while reading, the level restored before anything is yielded.
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.CRITICAL)
    try:
        text = _pdf_text(path, max_record_bytes)
    except Exception as error:  # pypdf raises several types for a damaged file
        text = RecordError(source, f"not a readable PDF: {_first_line(error)}")
    finally:
        pypdf_log.setLevel(level)
    yield (source, text) if isinstance(text, RecordError) else _extracted(path, text, max_record_bytes)


# UTF-32's little-endian mark begins with UTF-16's, so it is tried first.
WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
TEXT_FORMATS = ("jsonl", "json", "csv", "tsv", "txt", "html")


def wide_encoding(path: Path) -> str | None:
    """"UTF-16" or "UTF-32" when ``path`` starts with that byte-order mark (Excel's "Unicode Text", PowerShell)."""
    with open_binary(path) as handle:
        start = handle.read(4)
    return next((name for bom, name in WIDE_BOMS if start.startswith(bom)), None)


def _split_bare_cr(raw: bytes) -> list[bytes]:
    """The lines of ``raw``: one, unless it is ended by bare \r (Excel for Mac), which one readline does not split."""
    return raw.splitlines(keepends=True) if b"\r" in raw.rstrip(b"\r\n") else [raw]


def code_page_text(path: Path, kind: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> RecordError | None:
    """One error for a file written in an 8-bit code page (Excel's "CSV (Comma delimited)" on Windows: Windows-1252).

    Such a file is refused whole rather than guessed at: Windows-1252, Latin-1, Windows-1251 or Mac Roman decode
    (almost) any byte, so a wrong guess would train on garbled text with no error. It is told from a UTF-8 file with a damaged
    line by its non-ASCII lines: two or more of them, and none valid UTF-8. With one such line, or a UTF-8 line
    anywhere, each bad line stays its own error (reported by the reader) and the rest is read.
    """
    first: tuple[int, bytes, UnicodeDecodeError] | None = None
    bad_lines = 0
    number = 0
    with open_binary(path) as handle:
        for raw, _ in bounded_lines(handle, max_record_bytes):
            for line in _split_bare_cr(raw) if raw is not None else [b""]:  # an oversized line is the reader's error
                number += 1
                if line.isascii():
                    continue
                if number == 1 and line.startswith(UTF8_BOM):
                    return None  # Excel's "CSV UTF-8" (a damaged line after it stays that line's error)
                try:
                    line.decode("utf-8")
                    return None
                except UnicodeDecodeError as error:
                    if repair_utf8(line) is not None:
                        return None
                    bad_lines += 1
                    first = first or (number, line, error)
    if first is None or bad_lines < 2:
        return None
    number, line, error = first
    byte = f"byte 0x{line[error.start]:02x} at byte {error.start + 1}"
    counted = f"none of the {bad_lines} lines with non-ASCII bytes is UTF-8"
    excel = kind == "csv"
    try:
        text = line.decode("cp1252")  # one character per byte: error.start is the character's index
    except UnicodeDecodeError:  # one of the five bytes Windows-1252 leaves undefined: another code page
        reason = f"undecodable bytes: not UTF-8 text ({byte}; {counted}): the file is in an 8-bit code page; save it as UTF-8"
    else:
        start = error.start - len(re.search(r"\w*$", text[: error.start]).group())
        end = re.compile(r"\w*").match(text, error.start + 1).end()
        fix = "as Excel saves 'CSV (Comma delimited)'; save it as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)')" if excel else ""
        reason = (
            f"undecodable bytes: not UTF-8 text ({byte}, {text[start:end]!r} in Windows-1252; {counted}): "
            f"the file looks saved as Windows-1252{', ' + fix if fix else '; save it as UTF-8'}"
        )
    source = f"{path}:{number}"
    return RecordError(source, reason + "; the file is unread")


def iter_rows(path: Path, file_format: str = "auto", max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[RowOrError]:
    """Rows of one file in its own field names (see the module docstring).

    Raises:
        DataError: for an unknown format or a file that cannot be opened at all.
    """
    kind = detect_format(path, file_format)
    try:
        encoding = wide_encoding(path) if kind in TEXT_FORMATS else None
        # Read line by line, every line with an accent would be its own error, the others kept as if nothing were wrong.
        code_page = code_page_text(path, kind, max_record_bytes) if kind in TEXT_FORMATS and encoding is None else None
        if code_page is not None:
            yield code_page.source, code_page
        elif encoding is not None:
            # Read as UTF-8, every row would be garbled into its own misleading error.
            source = f"{path}:1"
            yield source, RecordError(
                source,
                f"undecodable bytes: the file is {encoding} text (it starts with a {encoding} byte-order mark), not UTF-8; "
                "save it as UTF-8; the file is unread",
            )
        elif kind == "jsonl":
            yield from iter_jsonl(path, max_record_bytes)
        elif kind == "json":
            yield from iter_json(path, max_record_bytes=max_record_bytes)
        elif kind in ("csv", "tsv"):
            yield from iter_csv(path, "\t" if kind == "tsv" else None, max_record_bytes)
        elif kind == "parquet":
            yield from iter_parquet(path)
        elif kind == "arrow":
            yield from iter_arrow(path)
        elif kind == "hf_disk":
            yield from iter_saved_dataset(path)
        elif kind == "txt":
            yield from iter_txt(path, max_record_bytes)
        elif kind == "html":
            yield from iter_html(path, max_record_bytes)
        elif kind == "docx":
            yield from iter_docx(path, max_record_bytes)
        elif kind == "pdf":
            yield from iter_pdf(path, max_record_bytes)
        else:
            raise DataError(f"{path}: unknown format '{kind}'")
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from None


def _files_under(folder: Path) -> list[Path]:
    """The readable files under ``folder``; a saved Hugging Face dataset inside it counts as one entry (its folder)."""
    found = []
    saved: list[Path] = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or any(root in path.parents for root in saved):
            continue
        if path.is_dir() and is_saved_dataset(path):
            saved.append(path)
            found.append(path)
            continue
        if not path.is_file() or path.name.startswith("~$"):  # "~$": Office's lock file beside an open document
            continue
        if format_by_name(path) is not None:
            found.append(path)
    if any(path in saved or format_by_name(path) not in DOCUMENT_FORMATS for path in found):
        # A folder of data files (a downloaded dataset with its README.md card, docs beside a CSV) is its data files:
        # documents there were never read before tunelab read documents, and would be refused or trained as records.
        found = [path for path in found if path in saved or not _document_beside_data(path)]
    # Sorted by the POSIX relative path: the same order on every platform and filesystem.
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _document_beside_data(path: Path) -> bool:
    """Whether ``path`` is a document other than a .txt file (Markdown and other markup, HTML, .docx, PDF): in a folder
    that also holds data files it is left out (``_files_under``); a .txt file is read there as it always was."""
    suffix = Path(path.name.lower().removesuffix(".gz")).suffix
    return format_by_name(path) in DOCUMENT_FORMATS and suffix not in (".txt", ".text")


LABEL_FOLDERS_EXPECTED = (
    "expected FOLDER/LABEL/file: each label's documents (.txt, .md, .html, .docx, .pdf, ...) in a folder named after the "
    "label, one level down, and nothing else there"
)


def label_folders(folder: Path, files: list[Path]) -> dict[Path, str] | None:
    """Each file's label when ``folder`` keeps labelled documents one folder per label (``FOLDER/LABEL/file``, as
    aclImdb, 20 Newsgroups and scikit-learn's ``load_files`` do): the name of the folder it is in, as written.

    ``files`` are ``resolve_files``' of ``folder`` (hidden files and Office lock files already left out). None when no
    document is in a subfolder: a folder of data files (a card beside them is already left out) or of documents at its
    top, each read as before.

    Raises:
        DataError: when documents are in subfolders but the folder is not that layout (documents at the top too, a
            deeper folder, data files beside them: which files are examples of which label cannot be told), naming
            what was found; or when a label folder holds no document.
    """
    depth = {file: len(file.relative_to(folder).parts) for file in files}
    if not any(depth[file] > 1 and format_by_name(file) in DOCUMENT_FORMATS for file in files):
        return None
    found = {
        "documents at the top": [f for f in files if depth[f] == 1 and format_by_name(f) in DOCUMENT_FORMATS],
        "documents nested deeper": [f for f in files if depth[f] > 2 and format_by_name(f) in DOCUMENT_FORMATS],
        "data files": [f for f in files if format_by_name(f) not in DOCUMENT_FORMATS],  # a saved dataset's folder too
    }
    problems = [f"{what} ({_some(folder, paths)})" for what, paths in found.items() if paths]
    if problems:
        raise DataError(
            f"{folder}: documents in subfolders are read as one folder per label, but the folder also holds {'; '.join(problems)}",
            f"{LABEL_FOLDERS_EXPECTED}; move or remove the others",
        )
    labels = {file: file.parent.name for file in files}
    # An empty label folder is an error, not a note: its label would be silently missing from the label map, a class the
    # model can never predict, and such a folder is most often a copy that did not finish.
    named = set(labels.values())
    empty = sorted(child.name for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".") and child.name not in named)
    if empty:
        raise DataError(
            f"{folder}: the label folder(s) {', '.join(repr(name) for name in empty[:10])} hold no document: "
            "a label with no example",
            "add its documents, or remove the folder",
        )
    return labels


def _some(folder: Path, paths: list[Path], shown: int = 3) -> str:
    """``a.txt, b.txt, c.txt and 4 more``: a few of ``paths``, relative to ``folder``."""
    names = ", ".join(path.relative_to(folder).as_posix() for path in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def resolve_files(path: str) -> list[Path]:
    """The files a path names: a file, the readable files under a folder, or a glob's matches.

    A folder written by ``datasets``' ``save_to_disk`` is returned as itself (one source).

    Raises:
        DataError: when nothing matches.
    """
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return [candidate]
    if candidate.is_dir():
        if is_saved_dataset(candidate):
            return [candidate]  # the folder's metadata files are no data: datasets reads it as a whole
        files = _files_under(candidate)
        if not files:
            raise DataError(
                f"{path}: the folder holds no .jsonl/.json/.csv/.tsv/.parquet/.arrow/.txt files and no documents "
                "(.md/.markdown/.rst/.org/.tex/.html/.htm/.docx/.pdf)"
            )
        return files
    if any(ch in path for ch in "*?["):
        files = sorted((Path(p) for p in globbing.glob(os.path.expanduser(path), recursive=True)), key=lambda p: p.as_posix())
        files = [p for p in files if p.is_file() and not p.name.startswith("~$")]
        if not files:
            raise DataError(f"{path}: the pattern matches no file")
        return files
    raise DataError(f"data not found: {path}{looked_for(path)}", "check the path (a file, a folder or a glob)")


def looked_for(path: str) -> str:
    """`` (looked for /abs/path, ...)`` for a relative ``path`` that names nothing: where it was taken from.

    A relative path is the working folder's. In a config file it is first looked for in the config file's folder
    (``config.read_config_file``), which left it as written when nothing was there.
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return ""
    return (
        f" (looked for {candidate.absolute()}, relative to the working folder {Path.cwd()}; a path written in a config "
        "file is tried first relative to the config file's folder)"
    )


def content_hash(path: str) -> str:
    """A SHA-256 over the names and bytes of every file ``path`` names (a folder's files in order): a changed file, a
    changed key (a predictions baseline's cache, `tunelab predict`'s partial file)."""
    digest = hashlib.sha256()
    for found in resolve_files(path):
        files = sorted(p for p in found.rglob("*") if p.is_file()) if found.is_dir() else [found]
        for file in files:
            digest.update(file.name.encode("utf-8") + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 - the handle of this iteration
                    digest.update(block)
    return digest.hexdigest()[:24]
