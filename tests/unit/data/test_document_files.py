"""A ``text`` run reads a person's writing as it is: Markdown (and other markup) as written, an HTML page's visible text,
a Word document's paragraphs and tables, a PDF's text layer. Each file is one document, as a .txt file is; a file that
cannot be read (a scan, a password, a damaged file) is one record error naming it, and the other files still read."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from tunelab.config import DataConfig
from tunelab.data.formats import RecordError, iter_rows, resolve_files
from tunelab.data.read import read_records
from tunelab.errors import DataError


def _pdf(page_texts: list[str | None]) -> bytes:
    """A minimal valid PDF, one page per entry: a line of Helvetica text, or no text layer at all (None: a scan)."""
    pages = len(page_texts)
    # Objects: 1 catalog, 2 pages, 3 font, then each page and its content stream.
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(page_texts):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text is not None else b"0 0 1 rg 0 0 100 100 re f"
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _encrypted_pdf(tmp_path, text: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    plain = tmp_path / "plain-for-encryption.pdf"
    plain.write_bytes(_pdf([text]))
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    target = tmp_path / "encrypted-out.pdf"
    with target.open("wb") as handle:
        writer.write(handle)
    plain.unlink()
    data = target.read_bytes()
    target.unlink()
    return data


def _docx(path, blocks):
    import docx

    document = docx.Document()
    for block in blocks:
        if isinstance(block, str):
            document.add_paragraph(block)
        else:
            table = document.add_table(rows=len(block), cols=len(block[0]))
            for r, row in enumerate(block):
                for c, value in enumerate(row):
                    table.cell(r, c).text = value
    document.save(str(path))


def _texts(path, **options):
    return [row for _, row in iter_rows(path, **options)]


def test_a_hand_written_pdf_is_what_pypdf_extracts(tmp_path):
    # The test's own PDF must be a real one, or the tests below prove nothing about PDFs.
    from pypdf import PdfReader

    (tmp_path / "a.pdf").write_bytes(_pdf(["Hello from page one", None]))
    reader = PdfReader(tmp_path / "a.pdf")
    assert [page.extract_text().strip() for page in reader.pages] == ["Hello from page one", ""]


@pytest.mark.parametrize("suffix", [".md", ".markdown", ".rst", ".org", ".tex"])
def test_markup_files_are_read_as_written_like_txt(tmp_path, suffix):
    written = "# My notes\r\n\r\nSome *emphasis* and a [link](http://x).\r\n"
    (tmp_path / f"notes{suffix}").write_bytes("\ufeff".encode() + written.encode())
    (tmp_path / "notes.txt").write_bytes("\ufeff".encode() + written.encode())
    assert _texts(tmp_path / f"notes{suffix}") == _texts(tmp_path / "notes.txt") == [{"text": written.replace("\r\n", "\n")}]


def test_an_undecodable_markdown_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "bad.md").write_bytes(b"fine line\nbad \xff byte\n")
    [row] = _texts(tmp_path / "bad.md")
    assert isinstance(row, RecordError) and row.source == f"{tmp_path / 'bad.md'}:2" and "undecodable" in row.reason


def test_html_is_its_visible_text_in_paragraphs(tmp_path):
    page = """<!doctype html><html><head><title>Tab title</title><style>p { color: red }</style>
<script>var hidden = "not text";</script></head>
<body><h1>My  post</h1>
<p>First paragraph,
wrapped &amp; with an entity&nbsp;and <b>bold</b> words.</p>
<div>A div<br>with a break</div>
<ul><li>one</li><li>two</li></ul>
<pre>code  kept
  as is</pre>
<!-- a comment --></body></html>"""
    (tmp_path / "post.html").write_text(page, encoding="utf-8")
    (tmp_path / "post.htm").write_text(page, encoding="utf-8")
    expected = (
        "My post\n\nFirst paragraph, wrapped & with an entity\u00a0and bold words.\n\nA div\nwith a break\n\n"
        "one\n\ntwo\n\ncode  kept\n  as is"
    )
    assert _texts(tmp_path / "post.html") == _texts(tmp_path / "post.htm") == [{"text": expected}]


def test_docx_paragraphs_and_tables_in_document_order(tmp_path):
    _docx(tmp_path / "letter.docx", ["Dear reader,", "", [["Name", "Age"], ["Ada", "36"]], "Yours truly."])
    assert _texts(tmp_path / "letter.docx") == [{"text": "Dear reader,\n\nName\tAge\nAda\t36\n\nYours truly."}]


def test_pdf_pages_in_order(tmp_path):
    (tmp_path / "essay.pdf").write_bytes(_pdf(["Page one words", "Page two words"]))
    [row] = _texts(tmp_path / "essay.pdf")
    assert row["text"].split("\n\n") == ["Page one words", "Page two words"]


def test_unreadable_documents_are_one_error_each_and_the_rest_still_read(tmp_path):
    (tmp_path / "scan.pdf").write_bytes(_pdf([None, None]))
    (tmp_path / "locked.pdf").write_bytes(_encrypted_pdf(tmp_path, "Secret words"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "empty.docx").write_bytes(b"")
    (tmp_path / "good.md").write_text("Still read.\n")
    result = read_records(str(tmp_path), "text", DataConfig())
    assert [record.text for record in result.records] == ["Still read.\n"]
    reasons = {error.source: error.reason for error in result.errors}
    assert set(reasons) == {f"{tmp_path / name}:1" for name in ("scan.pdf", "locked.pdf", "broken.pdf", "broken.docx", "empty.docx")}
    assert "no text layer: a scanned PDF needs OCR first" in reasons[f"{tmp_path / 'scan.pdf'}:1"]
    assert "encrypted" in reasons[f"{tmp_path / 'locked.pdf'}:1"]
    assert "not a readable PDF" in reasons[f"{tmp_path / 'broken.pdf'}:1"]
    assert logging.getLogger("pypdf").level == logging.NOTSET  # quiet only while a PDF is read
    assert "not a readable Word" in reasons[f"{tmp_path / 'broken.docx'}:1"]


def test_the_record_limit_applies_to_the_extracted_text(tmp_path):
    _docx(tmp_path / "long.docx", ["word " * 400])
    (tmp_path / "long.pdf").write_bytes(_pdf(["word " * 100] * 4))
    (tmp_path / "long.html").write_text("<p>" + "word " * 400 + "</p>")
    # Markup does not count: a page far larger than the limit whose text fits is read.
    (tmp_path / "styled.html").write_text("<style>" + "x" * 5000 + "</style><p>short</p>")
    for name in ("long.docx", "long.pdf", "long.html"):
        [row] = _texts(tmp_path / name, max_record_bytes=1000)
        assert isinstance(row, RecordError) and "record too large" in row.reason and "one document" in row.reason, name
    assert _texts(tmp_path / "styled.html", max_record_bytes=1000) == [{"text": "short"}]


def test_a_folder_of_documents_is_read_and_office_lock_files_are_not(tmp_path):
    for name in ("a.md", "b.html", "c.rst", "d.txt"):
        (tmp_path / name).write_text("words")
    _docx(tmp_path / "e.docx", ["words"])
    (tmp_path / "f.pdf").write_bytes(_pdf(["words"]))
    (tmp_path / "~$e.docx").write_bytes(b"\x00lock")  # Word's owner file while e.docx is open
    assert [p.name for p in resolve_files(str(tmp_path))] == ["a.md", "b.html", "c.rst", "d.txt", "e.docx", "f.pdf"]
    assert [p.name for p in resolve_files(str(tmp_path / "*.docx"))] == ["e.docx"]
    result = read_records(str(tmp_path), "text", DataConfig())
    assert [record.text for record in result.records] == ["words"] * 6 and not result.errors


def test_an_empty_folder_names_the_document_extensions(tmp_path):
    with pytest.raises(DataError) as raised:
        resolve_files(str(tmp_path))
    assert all(suffix in str(raised.value) for suffix in (".md", ".html", ".docx", ".pdf"))


def test_other_tasks_refuse_documents_as_they_refuse_txt(tmp_path):
    _docx(tmp_path / "notes.docx", ["words"])
    (tmp_path / "notes.md").write_text("words")
    for name in ("notes.docx", "notes.md"):
        with pytest.raises(DataError, match="only the 'text' task reads"):
            read_records(str(tmp_path / name), "classify", DataConfig())


def test_data_check_reads_a_folder_of_documents(tmp_path):
    from tunelab.cli.main import _register_commands, app

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "one.md").write_text("# Monday\n\nI wrote this.\n")
    (notes / "two.html").write_text("<p>And this.</p>")
    _docx(notes / "three.docx", ["Then this."])
    (notes / "four.pdf").write_bytes(_pdf(["And finally this."]))
    (notes / "scan.pdf").write_bytes(_pdf([None]))
    _register_commands()
    result = CliRunner().invoke(app, ["data", "check", str(notes), "--task", "text", "--no-tokens", "--json"])
    report = json.loads(result.output)
    assert [error["source"] for error in report["errors"]] == [f"{notes / 'scan.pdf'}:1"]
    assert "no text layer: a scanned PDF needs OCR first" in report["errors"][0]["reason"]
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["data", "check", str(notes), "--task", "text", "--no-tokens", "--skip-invalid"])
    assert result.exit_code == 0, result.output


def test_distill_reads_an_unlabeled_markdown_file_as_it_reads_a_txt_file_one_prompt_per_line(tmp_path):
    # distill.unlabeled reads a .txt file as one prompt per non-empty line; a .md (or .txt.gz) file is the same text.
    from tunelab.config import parse_config
    from tunelab.tasks.distill import read_unlabeled

    for name in ("prompts.txt", "prompts.md", "prompts.rst"):
        (tmp_path / name).write_text("What is a lease?\n\nHow long is a notice period?\n")
        config = parse_config({"task": "sft", "data": {"train": str(tmp_path / name)}})
        prompts = [item.messages[0]["content"] for item in read_unlabeled(str(tmp_path / name), config)]
        assert prompts == ["What is a lease?", "How long is a notice period?"], name


def test_a_dataset_folder_s_readme_is_not_read_as_data(tmp_path):
    # A downloaded dataset keeps its card (README.md) beside its files: before documents were read it was never data,
    # and an sft or classify run of such a folder must stay as it was (not refused for a "raw text" file).
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(4)))
    (folder / "README.md").write_text("# A dataset card\n")
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4 not really")
    assert [path.name for path in resolve_files(str(folder))] == ["train.jsonl"]
    # A folder of documents alone is read whole, its README.md included.
    (folder / "train.jsonl").unlink()
    (folder / "notes.pdf").unlink()
    (folder / "essay.md").write_text("An essay.\n")
    assert [path.name for path in resolve_files(str(folder))] == ["README.md", "essay.md"]
