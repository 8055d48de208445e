"""Readers on the real corpora in ../shared/data and on small files written here.

What matters most is that no input crashes a reader: every damaged file or record comes
back as a Document with a reason, so the corpus job can count it.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from galeno.corpus import readers
from galeno.corpus.document import Document
from galeno.corpus.readers import FORMATS, expand_source, read_file, source_root


def read(path, fmt, source="src", root=None) -> list[Document]:
    return list(read_file(str(path), fmt, source, None if root is None else str(root)))


def only(docs: list[Document]) -> Document:
    assert len(docs) == 1, [(d.id, d.reason) for d in docs]
    return docs[0]


# --------------------------------------------------------------------------- file writers


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with one Helvetica text object (octal escapes for WinAnsi letters)."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


ARTICLE = (
    "<p>El paciente de 45 años ingresó en urgencias por dolor torácico opresivo irradiado al "
    "brazo izquierdo, con cortejo vegetativo y sudoración profusa.</p>"
    "<p>El electrocardiograma mostró elevación del segmento ST en derivaciones inferiores y se "
    "activó el código infarto para cateterismo urgente.</p>"
    "<p>La coronariografía demostró una oclusión aguda de la coronaria derecha, que se trató "
    "con angioplastia primaria e implante de stent farmacoactivo.</p>"
)


def page(article: str) -> str:
    return (
        "<html><head><title>Caso</title><style>p{color:red}</style></head><body>"
        "<nav><ul><li><a href='/'>Inicio</a></li><li><a href='/c'>Contacto</a></li></ul></nav>"
        f"<article><h1>Caso clínico</h1>{article}</article>"
        "<footer>Copyright 2024. Política de cookies.</footer><script>var x = 1;</script>"
        "</body></html>"
    )


def write_warc(path: Path, gzip_records: bool) -> list[str]:
    """A small crawl: warcinfo, request, HTML, plain text, an image, a 404; returns the
    record ids of the responses that should become documents."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    expected = []
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=gzip_records)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "galeno-test"}))

        def response(url, content_type, body, status="200 OK"):
            headers = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                               http_headers=headers)
            writer.write_record(record)
            return record.rec_headers.get_header("WARC-Record-ID")

        request = writer.create_warc_record(
            "http://ex.org/a", "request", payload=io.BytesIO(b"GET /a HTTP/1.1\r\nHost: ex.org\r\n\r\n"))
        writer.write_record(request)
        expected.append(response("http://ex.org/a", "text/html; charset=utf-8", page(ARTICLE).encode()))
        expected.append(response("http://ex.org/b.txt", "text/plain; charset=iso-8859-1",
                                 "Niño con fiebre y tos.".encode("latin-1")))
        response("http://ex.org/i.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(200))
        expected.append(response("http://ex.org/missing", "text/html", b"<html>Not found</html>",
                                 status="404 Not Found"))
        expected.append(response("http://ex.org/c", "text/html",
                                 page(ARTICLE.replace("45", "71")).encode()))
    return expected


# --------------------------------------------------------------------------- sources


def test_formats_and_unknown_format(tmp_path):
    assert FORMATS == ("jsonl", "text", "brat", "i2b2xml", "bioc", "conll", "warc", "pdf")
    (tmp_path / "a.txt").write_text("hola")
    with pytest.raises(ValueError, match="unknown input format"):
        read_file(str(tmp_path / "a.txt"), "docx", "src")  # raised eagerly, not on iteration
    with pytest.raises(ValueError, match="unknown input format"):
        expand_source(str(tmp_path), "docx")


def test_expand_source_directory_glob_and_file(tmp_path):
    for name in ["b.jsonl", "a.jsonl.gz", "sub/deep/c.json", "sub/notes.txt", "sub/x.JSONL"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"{}")
    by_dir = expand_source(str(tmp_path), "jsonl")
    assert by_dir == sorted(by_dir)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in by_dir] == [
        "a.jsonl.gz", "b.jsonl", "sub/deep/c.json", "sub/x.JSONL"]
    by_glob = expand_source(str(tmp_path / "**" / "*.json"), "jsonl")
    assert [Path(p).name for p in by_glob] == ["c.json"]
    assert expand_source(str(tmp_path / "sub" / "notes.txt"), "jsonl") == [str(tmp_path / "sub" / "notes.txt")]
    with pytest.raises(FileNotFoundError, match="no pdf input matches"):
        expand_source(str(tmp_path), "pdf")
    with pytest.raises(FileNotFoundError):
        expand_source(str(tmp_path / "nothing" / "*.jsonl"), "jsonl")


def test_source_root(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x")
    assert source_root(str(tmp_path / "d")) == str(tmp_path / "d")
    assert source_root(str(tmp_path / "d") + "/") == str(tmp_path / "d")
    assert source_root(str(tmp_path / "d" / "f.txt")) == str(tmp_path / "d")
    assert source_root(str(tmp_path / "d" / "**" / "brat" / "*.txt")) == str(tmp_path / "d")
    assert source_root("data/x[12]/*.xml") == "data"
    assert source_root("*.jsonl") == "."
    assert source_root("f.jsonl") == "."


def test_importing_readers_stays_cheap():
    heavy = ["lxml", "trafilatura", "warcio", "pypdf", "charset_normalizer"]
    code = ("import sys, galeno.corpus.readers; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- real corpora


@pytest.mark.shared_data
def test_meddocan_brat_and_xml_agree(shared_data):
    brat = expand_source(str(shared_data / "meddocan" / "dev" / "brat"), "brat")
    assert len(brat) == 250 and all(p.endswith(".txt") for p in brat)
    pattern = str(shared_data / "meddocan" / "**" / "xml" / "*.xml")
    xml = expand_source(pattern, "i2b2xml")
    assert len(xml) == 750
    root = source_root(pattern)
    assert root == str(shared_data / "meddocan")
    xml_by_stem = {Path(p).stem: p for p in xml}
    with_bom = 0
    for path in brat:
        from_brat = only(read(path, "brat", "meddocan", root))
        from_xml = only(read(xml_by_stem[Path(path).stem], "i2b2xml", "meddocan", root))
        assert from_brat.reason is None and from_xml.reason is None
        assert from_brat.id == from_xml.id == Path(path).stem
        assert from_brat.text == from_xml.text and len(from_brat.text) > 200
        assert from_brat.meta["has_ann"] is True
        assert from_brat.meta["file"] == f"dev/brat/{Path(path).name}"
        assert from_xml.meta["format"] == "i2b2xml" and from_xml.meta["n_tags"] > 0
        with_bom += from_brat.text.startswith("\ufeff")
        # the text must be the one brat's character offsets point into
        for line in Path(path).with_suffix(".ann").read_text(encoding="utf-8").splitlines():
            if line.startswith("T") and ";" not in line.split("\t")[1]:
                _, span, mention = line.split("\t")
                start, end = map(int, span.split()[1:])
                assert from_brat.text[start:end] == mention
    assert with_bom > 0  # some MEDDOCAN files start with a BOM that the offsets count


@pytest.mark.shared_data
def test_scielo_bioc(shared_data):
    docs = read(shared_data / "scielo" / "es-health.bioc.xml", "bioc", "scielo")
    assert len(docs) == 3941
    assert all(d.reason is None for d in docs)
    assert len({d.id for d in docs}) == len(docs)
    assert docs[0].id == "S0001-60022000000100008"
    assert Counter(d.meta["language"] for d in docs) == {"ES": 3941}
    with_abstract = [d for d in docs if d.meta["sections"] == ["title", "abstract"]]
    assert with_abstract
    title, abstract = with_abstract[0].text.split("\n")
    # sentences are joined by one space, without the spaces SciELO leaves around them
    assert "  " not in abstract and abstract.startswith("Introducción. El síncope")
    pt = read(shared_data / "scielo" / "pt-health.bioc.xml", "bioc", "scielo")
    assert Counter(d.meta["language"] for d in pt) == {"PT": 1380}


@pytest.mark.shared_data
def test_pharmaconer_dev_sentences(shared_data):
    docs = read(shared_data / "pharmaconer" / "dev.conll", "conll", "pharmaconer")
    assert len(docs) == 1046
    assert [d.id for d in docs[:2]] == ["pharmaconer:dev.conll:1", "pharmaconer:dev.conll:2"]
    assert sum(d.meta["n_tokens"] for d in docs) == 27784
    assert docs[0].text == "Contaba con TAC de cráneo y RMN de cráneo sin alteraciones."
    assert "tyndall celular (3 +) en cámara" in docs[1].text
    assert not any(" ." in d.text or " ," in d.text or "( " in d.text for d in docs)


@pytest.mark.shared_data
def test_truncated_real_bioc_keeps_documents_read(shared_data, tmp_path):
    data = (shared_data / "scielo" / "es-health.bioc.xml").read_bytes()
    cut = tmp_path / "cut.xml"
    cut.write_bytes(data[: len(data) // 2])
    docs = read(cut, "bioc", "scielo")
    good, last = docs[:-1], docs[-1]
    assert 1000 < len(good) < 3941 and all(d.reason is None for d in good)
    assert last.reason == "malformed_xml" and last.text == ""
    assert last.id == f"scielo:cut.xml:{len(good) + 1}#truncated"


# --------------------------------------------------------------------------- jsonl


def jsonl_lines() -> list[str]:
    return [
        json.dumps({"id": "doc-a", "text": "Paciente con disnea.", "url": "http://ex.org/a"}),
        "",
        json.dumps({"text": "Sin identificador."}),
        '{"id": "broken", "text": "unterminated',
        json.dumps({"html": page(ARTICLE)}),
        json.dumps({"id": 7, "html": "solo texto sin etiquetas"}),
        json.dumps({"id": "x", "title": "no text here"}),
        json.dumps({"id": "y", "text": ["not", "a", "string"]}),
        "   ",
    ]


def check_jsonl(docs: list[Document], name: str) -> None:
    by_id = {d.id: d for d in docs}
    assert [d.id for d in docs] == [
        "doc-a", f"web:{name}:3", f"web:{name}:4", f"web:{name}:5", "7", "x", "y"]
    assert by_id["doc-a"].text == "Paciente con disnea."
    assert by_id["doc-a"].meta == {"file": name, "format": "jsonl", "line": 1, "url": "http://ex.org/a"}
    assert by_id[f"web:{name}:3"].text == "Sin identificador." and by_id[f"web:{name}:3"].reason is None
    assert by_id[f"web:{name}:4"].reason == "malformed_json" and by_id[f"web:{name}:4"].text == ""
    html = by_id[f"web:{name}:5"]
    assert html.reason is None and "html_fallback" not in html.meta
    assert "oclusión aguda de la coronaria derecha" in html.text
    assert not any(junk in html.text for junk in ("Inicio", "Copyright", "var x", "color:red"))
    fallback = by_id["7"]
    assert fallback.meta["html_fallback"] is True and fallback.text == "solo texto sin etiquetas"
    assert by_id["x"].reason == by_id["y"].reason == "no_text"


def test_jsonl_plain_and_gz(tmp_path):
    text = "\n".join(jsonl_lines()) + "\n"
    (tmp_path / "web.jsonl").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "web.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(text)
    check_jsonl(read(tmp_path / "web.jsonl", "jsonl", "web"), "web.jsonl")
    check_jsonl(read(tmp_path / "web.jsonl.gz", "jsonl", "web"), "web.jsonl.gz")


def test_jsonl_truncated_gz_and_relative_ids(tmp_path):
    lines = [json.dumps({"text": f"Documento número {i} sobre farmacología clínica."}) for i in range(2000)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    (tmp_path / "crawl" / "2024").mkdir(parents=True)
    path = tmp_path / "crawl" / "2024" / "part.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    docs = read(path, "jsonl", "web", root=tmp_path / "crawl")
    assert docs[0].id == "web:2024/part.jsonl.gz:1"
    assert docs[-1].reason == "corrupt_gzip" and docs[-1].id == "web:2024/part.jsonl.gz#corrupt"
    assert 0 < len(docs) - 1 < 2000
    assert all(d.reason in (None, "malformed_json") for d in docs[:-1])


# --------------------------------------------------------------------------- decoding


def test_latin1_text_is_guessed_and_recorded(tmp_path):
    body = "El niño presentó fiebre, náuseas y dolor abdominal; se pautó paracetamol.\n"
    (tmp_path / "caso.txt").write_bytes(body.encode("latin-1"))
    doc = only(read(tmp_path / "caso.txt", "text", "notes"))
    assert doc.id == "notes:caso.txt"
    assert doc.text == body and doc.bad_bytes == 0
    assert doc.meta["encoding"] in ("cp1252", "latin_1")


def test_invalid_utf8_bytes_are_counted_not_dropped(tmp_path):
    data = "Diagnóstico: neumonía ".encode() + b"\xff\xfe" + " bilateral, pO2 bajo.".encode()
    (tmp_path / "bad.txt").write_bytes(data)
    doc = only(read(tmp_path / "bad.txt", "text", "notes"))
    assert doc.bad_bytes == 2 and "encoding" not in doc.meta
    assert doc.text == "Diagnóstico: neumonía \ufffd\ufffd bilateral, pO2 bajo."


def test_utf8_bom_and_utf16_are_decoded(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfA\xc3\xb1o")
    (tmp_path / "wide.txt").write_bytes("Año clínico".encode("utf-16"))
    assert only(read(tmp_path / "bom.txt", "text", "s")).text == "Año"
    wide = only(read(tmp_path / "wide.txt", "text", "s"))
    assert wide.text == "Año clínico" and wide.meta["encoding"] == "utf-16"


def test_conll_bad_bytes_go_to_their_sentence(tmp_path):
    data = "Dolor\tO\n(\tO\n3\tO\n+\tO\n)\tO\nen\tO\nfémur\tO\n:\tO\n50\tO\n%\tO\n.\tO\n\n".encode()
    data += b"Fiebre\tO\nalt\xe9\tO\n.\tO\n\n"  # one Latin-1 byte in a UTF-8 file
    (tmp_path / "s.conll").write_bytes(data)
    first, second = read(tmp_path / "s.conll", "conll", "c")
    assert first.text == "Dolor (3 +) en fémur: 50%." and first.bad_bytes == 0
    assert first.meta["n_tokens"] == 11 and "encoding" not in first.meta
    assert second.text == "Fiebre alt\ufffd." and second.bad_bytes == 1


@pytest.mark.parametrize("chunk", [1 << 20, 3], ids=["one_chunk", "3_byte_chunks"])
def test_bioc_bad_bytes_go_to_their_document(tmp_path, monkeypatch, chunk):
    # tiny chunks split characters, bad bytes and </document> tags across reads
    monkeypatch.setattr(readers, "_CHUNK", chunk)
    def document(doc_id: str, text: bytes) -> bytes:
        return (f"<document><id>{doc_id}</id><passage><infon key=\"language\">ES</infon>"
                "<infon key=\"section\">title</infon><offset>0</offset><text>").encode() + text + (
                b"</text></passage></document>")

    data = (b'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE collection SYSTEM "BioC.dtd">'
            b"<collection><source>t</source>" + document("a", "Úno.".encode())
            + document("b", b"Dos \x80\xffx.") + document("", "Trés.".encode()) + b"</collection>")
    (tmp_path / "c.xml").write_bytes(data)
    docs = read(tmp_path / "c.xml", "bioc", "bio")
    assert [d.id for d in docs] == ["a", "b", "bio:c.xml:3"]
    assert [d.bad_bytes for d in docs] == [0, 2, 0]
    assert [d.text for d in docs] == ["Úno.", "Dos \ufffd\ufffdx.", "Trés."]
    assert docs[2].meta["language"] == "ES" and docs[2].meta["sections"] == ["title"]


# --------------------------------------------------------------------------- structure and damage


def test_conll_docstart_delimits_documents(tmp_path):
    (tmp_path / "d.conll").write_text(
        "-DOCSTART- -X- O O\n\nEl O\npaciente O\n. O\n\nMejoró O\n. O\n\n"
        "-DOCSTART- -X- O O\n\nAlta O\n[ O\nhoy O\n] O\n. O\n")
    docs = read(tmp_path / "d.conll", "conll", "c")
    assert [d.id for d in docs] == ["c:d.conll:1", "c:d.conll:2"]
    assert docs[0].text == "El paciente.\nMejoró." and docs[0].meta["n_sentences"] == 2
    assert docs[1].text == "Alta [hoy]." and docs[1].meta["n_tokens"] == 5


def test_xml_damage_is_reported(tmp_path):
    (tmp_path / "S1.xml").write_text("<MEDDOCAN><TEXT><![CDATA[Paciente de 30 años.")
    doc = only(read(tmp_path / "S1.xml", "i2b2xml", "m"))
    assert doc.id == "S1" and doc.reason == "malformed_xml" and doc.text == ""
    assert "XMLSyntaxError" in doc.meta["error"]
    (tmp_path / "c.xml").write_text("<collection><document><id>a</id><passage><text>Uno."
                                    "</text></passage></document><document><id>b</id><pass")
    docs = read(tmp_path / "c.xml", "bioc", "bio")
    assert [(d.id, d.reason) for d in docs] == [("a", None), ("bio:c.xml:2#truncated", "malformed_xml")]


def bioc_collection(*documents: str, close: bool = True) -> str:
    body = "".join(f"<document><id>{i}</id><passage><text>{t}</text></passage></document>" for i, t in documents)
    return '<?xml version="1.0"?><collection><source>t</source>' + body + ("</collection>\n" if close else "")


@pytest.fixture(params=[False, True], ids=["strict_libxml2", "recovering_libxml2"])
def any_libxml2(request, monkeypatch):
    """Our damage rule must not depend on libxml2's recovery, which changes between releases
    (2.14 closes a truncated element where 2.13 stopped): run with a parser that recovers too."""
    if request.param:
        from lxml import etree

        monkeypatch.setattr(readers, "_xml_parser", lambda: etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, recover=True))


@pytest.mark.parametrize("cut, expected", [
    ("<document><id>c</id><passage><te", ["a", "b", "bio:c.xml:3#truncated"]),  # inside a document
    ("<document><id>c</id><passage><text>Tres.</text></passage>", ["a", "b", "bio:c.xml:3#truncated"]),
    ("\n", ["a", "b", "bio:c.xml:3#truncated"]),                               # between documents
    ("</collec", ["a", "b", "bio:c.xml:3#truncated"]),                          # in the end tag
    ("</collection>", ["a", "b"]),                                              # not cut at all
])
def test_bioc_cut_off_is_our_rule(tmp_path, any_libxml2, cut, expected):
    text = bioc_collection(("a", "Uno."), ("b", "Dos."), close=False) + cut
    (tmp_path / "c.xml").write_text(text)
    docs = read(tmp_path / "c.xml", "bioc", "bio")
    assert [d.id for d in docs] == expected
    assert [d.text for d in docs[:2]] == ["Uno.", "Dos."] and all(d.reason is None for d in docs[:2])
    if len(docs) == 3:
        last = docs[2]
        assert last.reason == "malformed_xml" and last.text == "" and last.meta["documents_read"] == 2
        assert last.meta.get("document_id") == ("c" if "<id>c" in cut else None)


def test_bioc_damaged_document_is_rejected_alone(tmp_path):
    text = bioc_collection(("a", "Uno."), ("b", "Dos & tres."), ("c", "Cuatro <i>cinco."), ("d", "Seis."))
    (tmp_path / "c.xml").write_text(text)
    docs = read(tmp_path / "c.xml", "bioc", "bio")
    assert [(d.id, d.reason) for d in docs] == [
        ("a", None), ("bio:c.xml:2#malformed", "malformed_xml"), ("bio:c.xml:3#malformed", "malformed_xml"),
        ("d", None)]
    assert docs[1].meta["document_id"] == "b" and "XMLSyntaxError" in docs[1].meta["error"]
    assert docs[3].text == "Seis."


def test_bioc_lone_document_and_empty_collection(tmp_path):
    (tmp_path / "one.xml").write_text("<document><id>x</id><passage><text>Uno.</text></passage></document>\n")
    assert [(d.id, d.text) for d in read(tmp_path / "one.xml", "bioc", "bio")] == [("x", "Uno.")]
    (tmp_path / "none.xml").write_text("<collection><source>t</source></collection>")
    assert only(read(tmp_path / "none.xml", "bioc", "bio")).reason == "empty"
    (tmp_path / "junk.xml").write_text("this is <not xml")
    assert only(read(tmp_path / "junk.xml", "bioc", "bio")).reason == "malformed_xml"


@pytest.mark.parametrize("text", [
    "<MEDDOCAN><TEXT><![CDATA[Paciente de 30 años.]]></TEXT><TAGS><NAME start='0' end='3'/>",
    "<MEDDOCAN><TEXT><![CDATA[Paciente de 30 años.]]></TEXT><TAGS></TAGS></MEDDO",
    "<MEDDOCAN><TEXT><![CDATA[Paciente de 30 años.]]></TEXT></MEDDOCAN><extra/>",
])
def test_i2b2_cut_off_is_our_rule(tmp_path, any_libxml2, text):
    (tmp_path / "S1.xml").write_text(text)
    doc = only(read(tmp_path / "S1.xml", "i2b2xml", "m"))
    assert (doc.id, doc.reason, doc.text) == ("S1", "malformed_xml", "")
    (tmp_path / "S2.xml").write_text("<MEDDOCAN><TEXT>Varón.</TEXT><TAGS/></MEDDOCAN>\n<!-- fin -->\n")
    assert only(read(tmp_path / "S2.xml", "i2b2xml", "m")).text == "Varón."


@pytest.mark.parametrize("gzip_records", [False, True])
def test_warc_and_truncated_warc(tmp_path, gzip_records):
    path = tmp_path / "crawl.warc.gz"
    expected = write_warc(path, gzip_records)
    docs = read(path, "warc", "web")
    assert [d.id for d in docs] == expected  # request, warcinfo and the image are not documents
    html, plain, missing, other = docs
    assert html.meta["url"] == "http://ex.org/a" and html.reason is None
    assert "oclusión aguda" in html.text and "Inicio" not in html.text and "Copyright" not in html.text
    assert plain.text == "Niño con fiebre y tos." and plain.meta["encoding"] == "cp1252"
    assert missing.reason == "http_404" and missing.text == ""
    assert other.reason is None and "71 años" in other.text

    data = path.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    for fraction in (0.3, 0.5, 0.8, 0.95):  # cuts inside headers, payloads and gzip members
        cut.write_bytes(data[: int(len(data) * fraction)])
        partial = read(cut, "warc", "web")
        assert partial[-1].reason == "corrupt_warc" and partial[-1].id == "web:cut.warc.gz#corrupt"
        assert [d.id for d in partial[:-1]] == expected[: len(partial) - 1]
        assert len(partial) - 1 < len(expected)

    (tmp_path / "junk.warc").write_bytes(b"this is not a web archive\n" * 5)
    assert only(read(tmp_path / "junk.warc", "warc", "web")).reason == "corrupt_warc"


def test_pdf_text_blank_and_corrupt(tmp_path):
    from pypdf import PdfWriter

    good = minimal_pdf("Paciente con fiebre; diagn\\363stico: neumon\\355a.")
    (tmp_path / "good.pdf").write_bytes(good)
    doc = only(read(tmp_path / "good.pdf", "pdf", "pdfs"))
    assert doc.id == "pdfs:good.pdf" and doc.reason is None and doc.meta["n_pages"] == 1
    assert doc.text.strip() == "Paciente con fiebre; diagnóstico: neumonía."

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    with open(tmp_path / "blank.pdf", "wb") as fh:
        writer.write(fh)
    assert only(read(tmp_path / "blank.pdf", "pdf", "pdfs")).reason == "no_text"

    (tmp_path / "corrupt.pdf").write_bytes(good[:60])
    corrupt = only(read(tmp_path / "corrupt.pdf", "pdf", "pdfs"))
    assert corrupt.reason == "corrupt_pdf" and corrupt.text == "" and corrupt.meta["error"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("content", [b"", b" \n\t\r\n "], ids=["zero_bytes", "whitespace"])
def test_every_format_reports_empty_and_unreadable_files(tmp_path, fmt, content):
    path = tmp_path / "S9.dat"
    path.write_bytes(content)
    expected_id = "S9" if fmt in ("brat", "i2b2xml") else "src:S9.dat"
    doc = only(read(path, fmt))
    assert (doc.id, doc.reason, doc.text, doc.meta["format"]) == (expected_id, "empty", "", fmt)
    for missing in (tmp_path / "gone.dat", tmp_path):  # a missing file, a directory
        doc = only(read(missing, fmt))
        assert doc.reason == "unreadable" and doc.meta["error"]


KNOWN_REASONS = {None, "empty", "unreadable", "malformed_json", "no_text", "corrupt_gzip",
                 "malformed_xml", "corrupt_warc", "http_404", "corrupt_pdf"}


def sample_files(tmp_path: Path) -> dict[str, tuple[str, bytes]]:
    write_warc(tmp_path / "w.warc", gzip_records=False)
    write_warc(tmp_path / "w.warc.gz", gzip_records=True)
    bioc = ("<collection>" + "".join(
        f"<document><id>d{i}</id><passage><infon key='language'>ES</infon><sentence><text>"
        f"Frase número {i}.</text></sentence></passage></document>" for i in range(5))
        + "</collection>")
    return {
        "w.warc": ("warc", (tmp_path / "w.warc").read_bytes()),
        "w.warc.gz": ("warc", (tmp_path / "w.warc.gz").read_bytes()),
        "p.pdf": ("pdf", minimal_pdf("Hola, mundo.")),
        "j.jsonl.gz": ("jsonl", gzip.compress("\n".join(jsonl_lines()).encode())),
        "b.xml": ("bioc", bioc.encode()),
        "S1.xml": ("i2b2xml", "<MEDDOCAN><TEXT><![CDATA[Varón de 53 años.]]></TEXT><TAGS/></MEDDOCAN>".encode()),
        "c.conll": ("conll", "El\tO\nniño\tO\n.\tO\n\nAlta\tO\n".encode()),
    }


def test_damaged_files_never_raise(tmp_path):
    """Cut, overwritten and gapped copies of every format come back as documents, never errors."""
    import random

    rng = random.Random(7)
    for name, (fmt, data) in sample_files(tmp_path).items():
        reasons, noticed = Counter(), 0
        for attempt in range(30):
            damaged = bytearray(data)
            if attempt % 3 == 0:
                damaged = damaged[: rng.randrange(len(damaged))]
            elif attempt % 3 == 1:
                for _ in range(3):
                    damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            else:
                start = rng.randrange(len(damaged))
                del damaged[start: start + rng.randint(1, 40)]
            path = tmp_path / f"damaged-{name}"
            path.write_bytes(bytes(damaged))
            for doc in read(path, fmt):
                reasons[doc.reason] += 1
                noticed += bool(doc.reason or doc.bad_bytes or "encoding" in doc.meta)
                doc.text.encode("utf-8")  # no lone surrogates reach Arrow
                json.dumps(doc.meta)
        assert set(reasons) <= KNOWN_REASONS, (name, reasons)
        assert noticed, (name, reasons)  # the damage showed up somewhere
