"""A .txt document saved on Windows (CRLF) or old Mac (CR) is the same document as on Linux: its line ends are read as
"\\n", as Python's text mode and Hugging Face's text loader read them. Kept as written, the model was trained on (and
learned to write) carriage returns, perplexity counted their bytes, and the same document had another record id."""

from __future__ import annotations

from tunelab.config import DataConfig
from tunelab.data.read import load_records


def test_windows_and_mac_line_ends_read_as_newlines(tmp_path):
    (tmp_path / "unix.txt").write_bytes(b"line one\nline two\n\nthird\n")
    (tmp_path / "windows.txt").write_bytes(b"line one\r\nline two\r\n\r\nthird\r\n")
    (tmp_path / "mac.txt").write_bytes(b"line one\rline two\r\rthird\r")
    unix, windows, mac = (load_records(str(tmp_path / name), "text", DataConfig())[0] for name in ("unix.txt", "windows.txt", "mac.txt"))
    assert windows.text == mac.text == unix.text == "line one\nline two\n\nthird\n"
    assert windows.id == unix.id
