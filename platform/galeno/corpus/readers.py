"""Readers: one input file in any supported format -> :class:`Document` records.

Every corpus source enters the pipeline here, so this is where bad input has to become
*data* instead of a crash. A corrupt, truncated, empty or unreadable file, or one bad
record inside a good file, yields a Document whose ``reason`` says what went wrong (with
empty text), and the corpus job counts it in the manifest like any other drop.

Bytes are decoded here, once: UTF-8 first; then, for text that is clearly not UTF-8, a
confident legacy-encoding guess from charset-normalizer (kept in ``meta["encoding"]``);
otherwise UTF-8 with every undecodable byte replaced by U+FFFD and counted in
``Document.bad_bytes``. Nothing is normalised beyond decoding: Unicode normalisation and
mojibake repair belong to the cleaning stage, and brat offsets must keep pointing at the
right characters.

The parsers (lxml, trafilatura, warcio, pypdf, charset-normalizer) are imported inside the
reader that needs them, because every Ray worker imports galeno.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import itertools
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from galeno.corpus.document import Document

FORMATS: tuple[str, ...] = ("jsonl", "text", "brat", "i2b2xml", "bioc", "conll", "warc", "pdf")

#: Files picked up when a source names a directory (matched case-insensitively).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "jsonl": (".jsonl", ".jsonl.gz", ".json"),
    "text": (".txt",),
    "brat": (".txt",),
    "i2b2xml": (".xml",),
    "bioc": (".xml",),
    "conll": (".conll", ".tsv", ".txt"),
    "warc": (".warc", ".warc.gz"),
    "pdf": (".pdf",),
}

_GLOB_CHARS = re.compile(r"[*?[]")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- sources


def _is_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS.search(pattern))


def _extensions(fmt: str) -> tuple[str, ...]:
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return EXTENSIONS[fmt]


def source_root(pattern: str) -> str:
    """The directory that ids are made relative to, so they do not depend on the glob used. For an
    object-store URI (``s3://bucket/prefix``), the prefix, as a URI."""
    from galeno import storage

    if storage.is_uri(pattern):
        head, _, query = pattern.partition("?")
        if _is_glob(head):
            head = head[:_GLOB_CHARS.search(head).start()].rpartition("/")[0]
        elif storage.is_file(pattern):
            head = head.rpartition("/")[0]
        return head.rstrip("/") + ("?" + query if query else "")
    if not _is_glob(pattern):
        return os.path.normpath(pattern if os.path.isdir(pattern) else os.path.dirname(pattern))
    head: list[str] = []
    for part in pattern.split(os.sep):
        if _is_glob(part):
            break
        head.append(part)
    root = os.sep.join(head)
    if not root:
        return os.sep if pattern.startswith(os.sep) else "."
    return os.path.normpath(root)


def _walk(top: str, exts: tuple[str, ...]) -> Iterator[str]:
    for folder, _, names in os.walk(top):
        for name in names:
            if name.lower().endswith(exts):
                yield os.path.join(folder, name)


def _expand_uri(pattern: str, fmt: str, exts: tuple[str, ...]) -> list[str]:
    """:func:`expand_source` on an object store: every object under the prefix with the format's
    extensions, or, for a glob, every object whose key matches it (``fnmatch``: ``*`` also crosses ``/``)."""
    import fnmatch

    from galeno import storage

    head = pattern.partition("?")[0]
    if _is_glob(head):
        return [uri for uri, _, _ in storage.list_files(source_root(pattern))
                if fnmatch.fnmatchcase(uri.partition("?")[0], head)
                and (fmt != "brat" or uri.partition("?")[0].lower().endswith(".txt"))]
    if storage.is_file(pattern):  # one object named in full
        return [pattern] if fmt != "brat" or head.lower().endswith(".txt") else []
    return [uri for uri, _, _ in storage.list_files(pattern) if uri.partition("?")[0].lower().endswith(exts)]


def expand_source(pattern: str, fmt: str) -> list[str]:
    """Input files of one source, sorted so that shards and ids are the same on every run. ``pattern``
    may be an object-store URI (``s3://bucket/prefix``); its files are then URIs too."""
    from galeno import storage

    exts = _extensions(fmt)
    if storage.is_uri(pattern):
        found = _expand_uri(pattern, fmt, exts)
        if not found:
            raise FileNotFoundError(f"no {fmt} input matches {pattern!r} (a prefix is searched for "
                                    f"{', '.join(exts)}; a glob matches whole keys)")
        return sorted(found)
    if _is_glob(pattern):
        matches = glob.glob(pattern, recursive=True)
    else:
        matches = [pattern] if os.path.exists(pattern) else []
    files: set[str] = set()
    for match in matches:
        if os.path.isdir(match):
            files.update(_walk(match, exts))
        elif os.path.isfile(match) and (fmt != "brat" or match.lower().endswith(".txt")):
            # brat's .ann files hold annotations, not corpus text.
            files.add(match)
    if not files:
        raise FileNotFoundError(
            f"no {fmt} input matches {pattern!r} (a directory is searched recursively for "
            f"{', '.join(exts)}; a glob may use **)"
        )
    return sorted(files)


# --------------------------------------------------------------------------- decoding

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# surrogateescape turns each undecodable byte into one lone surrogate; lone surrogates can
# also come out of JSON escapes or PDF text. Either way they cannot be written as UTF-8.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
# Galeno reads Spanish, Portuguese and French: a legacy single-byte file in those languages
# is Windows-1252 or Latin-1 in practice, and charset-normalizer, which cannot tell them from
# Central European code pages on short texts, would otherwise pick cp1250 and turn ñ into ń.
_WESTERN = ("cp1252", "latin_1")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._:-]+)[\"']")


def _codec(name: Optional[str]) -> Optional[str]:
    try:
        return codecs.lookup(name).name if name else None
    except LookupError:
        return None


def _settle(text: str) -> tuple[str, int]:
    """Replace what could not be decoded by U+FFFD and say how much that was."""
    return _LONE_SURROGATE.subn("\ufffd", text)


def _guess_legacy(data: bytes) -> Optional[str]:
    """A confident non-UTF-8 encoding for ``data``, or None to keep UTF-8 with replacements."""
    n_bad = len(_LONE_SURROGATE.findall(data.decode("utf-8", "surrogateescape")))
    n_good = sum(1 for _ in _UTF8_MULTIBYTE.finditer(data))
    if n_good >= n_bad:
        return None  # mostly well-formed UTF-8 with a few damaged bytes, not a legacy file
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    tied = [m for m in matches if m.chaos <= best.chaos + 0.01]
    for name in _WESTERN:
        if any(name in m.could_be_from_charset for m in tied):
            return name
    # Any other code page only with evidence that the text reads as some language.
    return best.encoding if best.coherence >= 0.5 else None


def _decode(data: bytes, hint: Optional[str] = None,
            strip_bom: bool = True) -> tuple[str, Optional[str]]:
    """Decode ``data``, leaving each undecodable byte as a lone surrogate for :func:`_settle`.

    Returns the text and the encoding used when it is not UTF-8 (for ``meta["encoding"]``).
    ``hint`` is an encoding the container declares (HTTP header, XML declaration); UTF-8
    still goes first because pages mislabelled as Latin-1 are common and UTF-8 that decodes
    cleanly is almost never an accident. ``strip_bom=False`` keeps a UTF-8 BOM as U+FEFF,
    for files whose annotations count it as a character.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            if name == "utf-8-sig" and not strip_bom:
                break
            return data.decode(name, "surrogateescape"), None if name == "utf-8-sig" else name
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    hinted = _codec(hint)
    if hinted and hinted != "utf-8":
        # Browsers read a Latin-1 label as Windows-1252 (WHATWG); so do we, where it decodes.
        for name in ("cp1252", hinted) if hinted == "iso8859-1" else (hinted,):
            try:
                return data.decode(name), name
            except UnicodeDecodeError:
                pass
    guess = _guess_legacy(data)
    if guess:
        return data.decode(guess, "surrogateescape"), guess
    return data.decode("utf-8", "surrogateescape"), None


def _encoding_meta(encoding: Optional[str]) -> dict[str, str]:
    return {"encoding": encoding} if encoding else {}


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _is_blank(path: str) -> bool:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return False
    return True


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class _Source:
    """One input file being read, and how its documents are named."""

    path: str
    fmt: str
    source: str
    rel: str

    @property
    def file_id(self) -> str:
        # brat and MEDDOCAN XML name each document after its file, and the two formats of
        # the same case must share an id.
        if self.fmt in ("brat", "i2b2xml"):
            return Path(self.path).stem
        return f"{self.source}:{self.rel}"

    def line_id(self, n: int) -> str:
        return f"{self.source}:{self.rel}:{n}"

    def doc(self, doc_id: str, text: str = "", *, reason: Optional[str] = None,
            bad_bytes: int = 0, error: Optional[BaseException] = None, **meta: Any) -> Document:
        if error is not None:
            meta["error"] = f"{type(error).__name__}: {error}"[:500]
        return Document(id=doc_id, source=self.source, text="" if reason else text,
                        meta={"file": self.rel, "format": self.fmt, **meta},
                        reason=reason, bad_bytes=bad_bytes)


def _file_document(src: _Source, doc_id: str, strip_bom: bool = True, **meta: Any) -> Document:
    text, encoding = _decode(_read_bytes(src.path), strip_bom=strip_bom)
    text, bad = _settle(text)
    reason = None if text.strip() else "empty"
    return src.doc(doc_id, text, reason=reason, bad_bytes=bad, **_encoding_meta(encoding), **meta)


# --------------------------------------------------------------------------- HTML


_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 "
    "h6 header hr li main nav ol p pre section table td th title tr ul".split()
)


def _lxml_text(html: str) -> str:
    """Plain visible text, for pages too small or odd for trafilatura to find an article in."""
    import lxml.html
    from lxml import etree

    try:
        tree = lxml.html.document_fromstring(_XML_DECLARATION.sub("", html, count=1))
    except (ValueError, etree.LxmlError):
        return ""
    for element in list(tree.iter("script", "style", "noscript", "template")):
        element.drop_tree()
    for element in tree.iter():
        if element.tag in _BLOCK_TAGS:
            element.tail = "\n" + (element.tail or "")
    lines = (" ".join(line.split()) for line in tree.text_content().split("\n"))
    return "\n".join(line for line in lines if line)


def _html_text(html: str) -> tuple[str, bool]:
    """Main text of a page without navigation and footers; True when lxml had to stand in."""
    import trafilatura

    try:
        text = trafilatura.extract(html, include_comments=False, include_tables=True,
                                   deduplicate=False, with_metadata=False)
    except Exception:  # hostile HTML must cost one page, not the file
        text = None
    if text is not None:
        return text, False
    return _lxml_text(html), True


# --------------------------------------------------------------------------- formats


def _read_text(src: _Source) -> Iterator[Document]:
    yield _file_document(src, src.file_id)


def _read_brat(src: _Source) -> Iterator[Document]:
    has_ann = os.path.exists(os.path.splitext(src.path)[0] + ".ann")
    # brat offsets count a leading BOM as a character (MEDDOCAN has such files, and its XML
    # keeps the U+FEFF too): stripping it would shift every annotation by one.
    yield _file_document(src, src.file_id, strip_bom=False, has_ann=has_ann)


def _jsonl_record(src: _Source, n: int, raw: bytes) -> Document:
    line, encoding = _decode(raw)
    line, bad = _settle(line)
    line_id = src.line_id(n)
    meta: dict[str, Any] = {"line": n, **_encoding_meta(encoding)}
    try:
        record = json.loads(line)
    except ValueError as exc:
        return src.doc(line_id, reason="malformed_json", bad_bytes=bad, error=exc, **meta)
    if not isinstance(record, dict):
        return src.doc(line_id, reason="malformed_json", bad_bytes=bad, **meta)
    given = record.get("id")
    doc_id = str(given) if isinstance(given, (str, int)) and not isinstance(given, bool) else ""
    doc_id = doc_id or line_id
    if isinstance(record.get("url"), str):
        meta["url"] = record["url"]
    text, html = record.get("text"), record.get("html")
    if isinstance(text, str):
        reason = None if text.strip() else "empty"
    elif text is None and isinstance(html, str):
        text, fallback = _html_text(html)
        if fallback:
            meta["html_fallback"] = True
        reason = None if text.strip() else "no_text"
    else:
        text, reason = "", "no_text"
    text, escaped = _settle(text)  # JSON "\ud800" escapes give lone surrogates
    return src.doc(doc_id, text, reason=reason, bad_bytes=bad + escaped, **meta)


def _read_jsonl(src: _Source) -> Iterator[Document]:
    compressed = src.path.lower().endswith(".gz")
    seen = False
    try:
        with (gzip.open if compressed else open)(src.path, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if raw.strip():
                    seen = True
                    yield _jsonl_record(src, n, raw)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # a cut or damaged .gz
        yield src.doc(f"{src.file_id}#corrupt", reason="corrupt_gzip", error=exc)
        return
    if not seen:
        yield src.doc(src.file_id, reason="empty")


class MalformedXML(ValueError):
    """XML that is not one complete, well-formed element by Galeno's own rule (see :func:`parse_xml`)."""


# Whitespace, comments and processing instructions: what may stand between and after elements.
_XML_MISC = r"(?:\s+|<!--.*?-->|<\?.*?\?>)*"
_XML_MISC_RE = re.compile(_XML_MISC, re.S)
_DOCUMENT_START = re.compile(r"<document[\s>]")
_ROOT_START = re.compile(r"<(?![!?])([^\s/>]+)")
_DOCUMENT_ID = re.compile(r"<id>\s*([^<]{1,200}?)\s*</id>")


def _xml_parser() -> Any:
    from lxml import etree

    # Never fetch a DTD or expand entities: inputs are untrusted and workers are offline.
    # Never recover either: whether libxml2 repairs a damaged tree, and how, changes between
    # releases (2.14 closes a truncated element where 2.13 stopped), so damage is our call.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=True, recover=False)


def _closes(text: str, name: str) -> bool:
    """Whether ``text`` ends with the end tag of element ``name``, then only whitespace,
    comments or processing instructions."""
    at = text.rfind(f"</{name}")
    return at >= 0 and re.fullmatch(rf"</{re.escape(name)}\s*>{_XML_MISC}", text[at:], re.S) is not None


def parse_xml(text: str) -> Any:
    """The root element of ``text``, which must be one complete, well-formed XML element.

    Galeno's rule, the same on every libxml2 release: the text parses without recovery, *and*
    it ends with the root's own end tag (a file cut off inside its last element is malformed
    even where a parser would close that element for us). Raises :class:`MalformedXML`.
    """
    from lxml import etree

    try:
        root = etree.fromstring(_XML_DECLARATION.sub("", text, count=1), parser=_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedXML(f"XMLSyntaxError: {exc}") from exc
    name = f"{root.prefix}:{etree.QName(root).localname}" if root.prefix else etree.QName(root).localname
    if not _closes(text, name) and not (len(root) == 0 and text.rstrip().endswith("/>")):
        raise MalformedXML(f"the file ends before </{name}>")
    return root


def read_xml_file(path: str) -> tuple[Any, int, Optional[str]]:
    """An XML file's root (by :func:`parse_xml`), its undecodable bytes and its non-UTF-8 encoding.

    The one place that reads a whole XML file: the i2b2 reader here and NER's MEDDOCAN reader
    both call it, so they agree on what is damaged.
    """
    data = _read_bytes(path)
    declared = _XML_ENCODING.match(data)
    text, encoding = _decode(data, hint=declared.group(1).decode("ascii") if declared else None)
    text, bad = _settle(text)
    return parse_xml(text), bad, encoding


def _read_i2b2xml(src: _Source) -> Iterator[Document]:
    try:
        root, bad, encoding = read_xml_file(src.path)
    except MalformedXML as exc:
        yield src.doc(src.file_id, reason="malformed_xml", error=exc)
        return
    body = root.findtext("TEXT")
    if body is None:
        body = root.findtext(".//TEXT") or ""
    tags = root.find("TAGS")
    reason = None if body.strip() else "no_text"
    yield src.doc(src.file_id, body, reason=reason, bad_bytes=bad,
                  n_tags=0 if tags is None else len(tags), **_encoding_meta(encoding))


def _stream_codec(head: bytes) -> str:
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    declared = _XML_ENCODING.match(head)
    name = _codec(declared.group(1).decode("ascii")) if declared else None
    return name if name and name != "utf-8" else "utf-8-sig"


def _xml_pieces(path: str, marker: str) -> Iterator[tuple[str, int]]:
    """Decoded XML in pieces that end just after ``marker``, with their undecodable bytes.

    Cutting at the end tag lets the caller charge bad bytes to the right document while
    still reading a large collection a chunk at a time.
    """
    with open(path, "rb") as fh:
        decoder = None
        buffer = ""
        while True:
            chunk = fh.read(_CHUNK)
            if decoder is None:
                decoder = codecs.getincrementaldecoder(_stream_codec(chunk))("surrogateescape")
                # The text is already decoded; a declaration naming another encoding would lie.
                buffer = _XML_DECLARATION.sub("", decoder.decode(chunk, final=not chunk), count=1)
            else:
                buffer += decoder.decode(chunk, final=not chunk)
            *complete, buffer = buffer.split(marker)
            for piece in complete:
                yield _settle(piece + marker)
            if not chunk:
                break
        if buffer:
            yield _settle(buffer)


def _passage_text(passage: Any) -> str:
    text = passage.findtext("text")
    if text is not None:
        return text
    # SciELO keeps text in sentences, each carrying its own leading/trailing space.
    sentences = (s.findtext("text") or "" for s in passage.iterfind("sentence"))
    return " ".join(s.strip() for s in sentences if s.strip())


def _bioc_document(src: _Source, element: Any, n: int, bad: int) -> Document:
    doc_id = (element.findtext("id") or "").strip() or src.line_id(n)
    texts, languages, sections = [], [], []
    for passage in element.iterfind("passage"):
        infons = {i.get("key"): (i.text or "").strip() for i in passage.iterfind("infon")}
        text = _passage_text(passage)
        if not text.strip():
            continue
        texts.append(text)
        sections.append(infons.get("section") or infons.get("type") or "")
        if infons.get("language") and infons["language"] not in languages:
            languages.append(infons["language"])
    meta: dict[str, Any] = {"sections": sections}
    if languages:
        meta["language"] = languages[0]
    if len(languages) > 1:
        meta["languages"] = languages
    reason = None if texts else "no_text"
    return src.doc(doc_id, "\n".join(texts), reason=reason, bad_bytes=bad, **meta)


def _named_id(fragment: str) -> dict[str, str]:
    """``{"document_id": ...}`` where a damaged document's ``<id>`` can still be read, else nothing."""
    found = _DOCUMENT_ID.search(fragment)
    return {"document_id": found.group(1)} if found else {}


def _bioc_piece(src: _Source, piece: str, n: int, bad: int, first: bool) -> Document:
    """Document ``n`` of a collection from its piece of the file, which ends at ``</document>``.

    Each document is parsed on its own, strictly: damage stays with the document it is in,
    and no parser's recovery decides what a damaged document holds.
    """
    if first:
        start = _DOCUMENT_START.search(piece)  # after the prolog and the collection's header
        at = start.start() if start else len(piece)
    else:
        at = _XML_MISC_RE.match(piece).end()
    try:
        return _bioc_document(src, parse_xml(piece[at:]), n, bad)
    except MalformedXML as exc:
        return src.doc(f"{src.line_id(n)}#malformed", reason="malformed_xml", bad_bytes=bad, error=exc,
                       **_named_id(piece[at:]))


def _read_bioc(src: _Source) -> Iterator[Document]:
    """A BioC collection, one document at a time, by Galeno's own rule for damage.

    The file is cut at each ``</document>`` and every piece is parsed strictly on its own
    (:func:`parse_xml`). A piece that does not parse is rejected as ``malformed_xml``
    (``…:N#malformed``) and the next one is read as usual. What follows the last
    ``</document>`` must close the collection; otherwise the file was cut off, and one
    ``…:N#truncated`` record (``malformed_xml``) stands for document N, the one cut short,
    and whatever came after it. The same input gives the same documents on every libxml2.
    """
    marker = "</document>"
    count = 0
    root = None
    tail, tail_bad = "", 0
    for piece, bad in _xml_pieces(src.path, marker):
        if root is None:
            found = _ROOT_START.search(piece)
            root = found.group(1) if found else ""
        if not piece.endswith(marker):
            tail, tail_bad = piece, bad  # only the last piece lacks the marker
            break
        count += 1
        yield _bioc_piece(src, piece, count, bad, first=count == 1)
    if count == 0:
        if not tail.strip():
            yield src.doc(src.file_id, reason="empty")
            return
        try:  # a collection without documents, or something that is not one
            parse_xml(tail)
        except MalformedXML as exc:
            yield src.doc(f"{src.line_id(1)}#truncated", reason="malformed_xml",
                          bad_bytes=tail_bad, error=exc, documents_read=0)
            return
        yield src.doc(src.file_id, reason="empty")
        return
    if root == "document" and count == 1 and _XML_MISC_RE.fullmatch(tail):
        return  # a lone BioC document as the whole file
    if root and _closes(tail, root) and _XML_MISC_RE.fullmatch(tail[: tail.rfind(f"</{root}")]):
        return
    cut = _DOCUMENT_START.search(tail)
    yield src.doc(f"{src.line_id(count + 1)}#truncated", reason="malformed_xml", bad_bytes=tail_bad,
                  error=MalformedXML(f"the file ends before </{root or 'collection'}>"),
                  documents_read=count, **(_named_id(tail[cut.start():]) if cut else {}))


_NO_SPACE_BEFORE = frozenset(".,;:)]%")
_NO_SPACE_AFTER = frozenset("([")
_JOINERS = frozenset("/-")  # "mg / dl" and "anti - GAD" were "mg/dl" and "anti-GAD" in the source text


def _detokenize(tokens: list[str]) -> str:
    """Undo CoNLL tokenisation the way SPACCC text is written: ``1 , 74 mg / dl`` -> ``1,74 mg/dl``.

    A comma or dot between two digit tokens is a decimal separator (Spanish ``1,74``), and
    ``/`` and ``-`` between words are glued; that is right far more often than not in
    clinical text, and it makes CoNLL sentences match the same sentence in raw text.
    """
    out: list[str] = []
    n = len(tokens)
    for i, token in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        decimal_sep = token in ",." and prev.isdigit() and i + 1 < n and tokens[i + 1][:1].isdigit()
        after_decimal = prev in ",." and i >= 2 and tokens[i - 2].isdigit() and token[:1].isdigit()
        glue = (token in _JOINERS or prev in _JOINERS) and i >= 1 and i + (token in _JOINERS) < n
        if (i and token not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER
                and not decimal_sep and not after_decimal and not glue):
            out.append(" ")
        out.append(token)
    return "".join(out)


def _conll_groups(text: str) -> tuple[list[list[list[str]]], bool]:
    """Documents as lists of sentences as lists of tokens; True when -DOCSTART- delimited them."""
    documents: list[list[list[str]]] = [[]]
    sentence: list[str] = []
    has_docstart = False
    for line in text.split("\n"):
        fields = line.split("\t") if "\t" in line else line.split()
        token = fields[0].strip() if fields else ""
        if token == "-DOCSTART-":
            has_docstart = True
            if sentence:
                documents[-1].append(sentence)
            sentence = []
            if documents[-1]:
                documents.append([])
        elif token:
            sentence.append(token)
        elif sentence:
            documents[-1].append(sentence)
            sentence = []
    if sentence:
        documents[-1].append(sentence)
    return [d for d in documents if d], has_docstart


def _read_conll(src: _Source) -> Iterator[Document]:
    text, encoding = _decode(_read_bytes(src.path))
    documents, has_docstart = _conll_groups(text)
    if not has_docstart:  # no document markers: every sentence stands alone
        documents = [[sentence] for group in documents for sentence in group]
    for n, sentences in enumerate(documents, 1):
        body, bad = _settle("\n".join(_detokenize(s) for s in sentences))
        yield src.doc(src.line_id(n), body, bad_bytes=bad, n_tokens=sum(map(len, sentences)),
                      n_sentences=len(sentences), **_encoding_meta(encoding))
    if not documents:
        yield src.doc(src.file_id, reason="empty")


_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.I)


def _payload_kind(content_type: str) -> Optional[str]:
    mime = content_type.split(";")[0].strip().lower()
    if "html" in mime:
        return "html"
    return "text" if mime == "text/plain" else None


def _check_complete(record: Any) -> None:
    # warcio hands back a short payload instead of failing when the file was cut.
    if record is not None and getattr(record.raw_stream, "limit", 0) > 0:
        raise EOFError(f"record {record.rec_headers.get_header('WARC-Record-ID')} is truncated")


def _warc_payloads(fh: Any) -> Iterator[tuple[Any, str, bytes]]:
    """HTTP responses worth reading; raises on damage, like warcio, but also on truncation."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    archive = ArchiveIterator(fh, arc2warc=False)
    previous = None
    for record in archive:
        _check_complete(previous)  # skipped records are read to their end by warcio
        previous = record
        if record.format != "warc":
            raise ArchiveLoadFailed(f"not a WARC record (warcio read it as {record.format})")
        if record.rec_type != "response" or record.http_headers is None:
            continue
        kind = _payload_kind(record.http_headers.get_header("Content-Type") or "")
        if kind is None:
            continue
        payload = record.content_stream().read()
        _check_complete(record)
        archive.read_to_end()  # reaches the record's end, where warcio checks its length
        if archive.err_count:  # the length was wrong, so this payload may not be the record's
            raise ArchiveLoadFailed(f"record {record.rec_headers.get_header('WARC-Record-ID')} "
                                    "is not followed by a record boundary")
        yield record, kind, payload
    _check_complete(previous)
    if archive.err_count:
        raise ArchiveLoadFailed("a record was not followed by a record boundary")
    # A file cut inside a record's headers just ends the iteration: look for leftovers.
    end = getattr(archive, "offset", None)
    if end is not None:
        fh.seek(end)
        if fh.read(1 << 16).strip():
            raise EOFError(f"incomplete record at byte {end}")


def _warc_document(src: _Source, n: int, record: Any, kind: str, payload: bytes) -> Document:
    headers, http = record.rec_headers, record.http_headers
    doc_id = headers.get_header("WARC-Record-ID") or src.line_id(n)
    content_type = http.get_header("Content-Type") or ""
    meta: dict[str, Any] = {"url": headers.get_header("WARC-Target-URI"),
                            "content_type": content_type}
    status = http.get_statuscode() or ""
    if not status.startswith("2"):  # error pages and redirects are not content
        return src.doc(doc_id, reason=f"http_{status or 'unknown'}", **meta)
    charset = _CHARSET.search(content_type)
    text, encoding = _decode(payload, hint=charset.group(1) if charset else None)
    text, bad = _settle(text)
    meta.update(_encoding_meta(encoding))
    if kind == "html" and text.strip():
        text, fallback = _html_text(text)
        if fallback:
            meta["html_fallback"] = True
    reason = None if text.strip() else ("empty" if not payload.strip() else "no_text")
    return src.doc(doc_id, text, reason=reason, bad_bytes=bad, **meta)


def _read_warc(src: _Source) -> Iterator[Document]:
    with open(src.path, "rb") as fh:
        payloads = _warc_payloads(fh)
        for n in itertools.count(1):
            try:
                item = next(payloads, None)
            except Exception as exc:  # warcio signals damage with many exception types
                yield src.doc(f"{src.file_id}#corrupt", reason="corrupt_warc", error=exc,
                              documents_read=n - 1)
                return
            if item is None:
                return
            yield _warc_document(src, n, *item)


def _read_pdf(src: _Source) -> Iterator[Document]:
    from pypdf import PdfReader

    with open(src.path, "rb") as fh:
        try:
            reader = PdfReader(fh)
            if reader.is_encrypted and not reader.decrypt(""):
                yield src.doc(src.file_id, reason="encrypted_pdf")
                return
            pages = list(reader.pages)
        except Exception as exc:  # pypdf signals damage with many exception types
            yield src.doc(src.file_id, reason="corrupt_pdf", error=exc)
            return
        texts, failed = [], 0
        for page in pages:
            try:
                texts.append(page.extract_text() or "")
            except Exception:  # one broken page should not cost the rest of the file
                failed += 1
    meta = {"n_pages": len(pages), **({"pages_failed": failed} if failed else {})}
    if pages and failed == len(pages):
        yield src.doc(src.file_id, reason="corrupt_pdf", **meta)
        return
    text, bad = _settle("\n".join(texts))
    reason = None if text.strip() else "no_text"
    yield src.doc(src.file_id, text, reason=reason, bad_bytes=bad, **meta)


_READERS: dict[str, Callable[[_Source], Iterator[Document]]] = {
    "jsonl": _read_jsonl,
    "text": _read_text,
    "brat": _read_brat,
    "i2b2xml": _read_i2b2xml,
    "bioc": _read_bioc,
    "conll": _read_conll,
    "warc": _read_warc,
    "pdf": _read_pdf,
}


def _guarded(reader: Callable[[_Source], Iterator[Document]], src: _Source) -> Iterator[Document]:
    """Turn every failure into an accounted-for Document: one bad file must not stop a job."""
    try:
        if _is_blank(src.path):
            yield src.doc(src.file_id, reason="empty")
            return
        yield from reader(src)
    except OSError as exc:
        yield src.doc(src.file_id, reason="unreadable", error=exc)
    except Exception as exc:  # a parser bug on hostile input: counted, not fatal
        yield src.doc(f"{src.file_id}#error", reason="reader_error", error=exc)


def read_file(path: str, fmt: str, source: str, root: Optional[str] = None) -> Iterator[Document]:
    """Documents of one input file; ids are relative to ``root`` so they survive a moved tree."""
    if fmt not in _READERS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    base = root if root is not None else (os.path.dirname(path) or ".")
    rel = os.path.relpath(path, base).replace(os.sep, "/")
    return _guarded(_READERS[fmt], _Source(path=path, fmt=fmt, source=source, rel=rel))
