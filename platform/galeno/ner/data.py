"""NER data: documents with character-offset entities, cut into sentences of BIO-tagged tokens.

Three formats come in: PharmaCoNER-style CoNLL (token TAB tag), brat standoff (``NAME.txt`` +
``NAME.ann``) and MEDDOCAN's i2b2-style XML (text in CDATA, ``<TAGS>`` children with
``start``/``end``/``TYPE``). Every reader returns the same :class:`NERDocument` records and a
stats dict: how many documents, sentences, tokens and entities came out, and how often each
rule below fired (a rule that never fired is left out). Those counts are data, as the corpus
stage's drop reasons are: a change in them is how a changed rule or a damaged input shows.

brat and XML documents go through :func:`make_document`, which applies these rules (the
stats key is in brackets):

* **Annotation checks.** A malformed ``.ann`` line or XML tag is skipped [``malformed``];
  brat lines other than text-bound ``T`` lines (relations, events, notes) are ignored
  [``ignored_annotation``]. The text an annotation quotes must equal the document text at its
  offsets (whitespace-insensitively: brat writes a newline inside a span as a space);
  otherwise the offsets point at the wrong characters and the entity is dropped
  [``text_mismatch``]. Spans outside the text are dropped [``out_of_range``].
* **Discontinuous entities** (``T1 Label 0 5;10 15``) keep their covering span, from the
  first start to the last end [``discontinuous``]: BIO cannot express a gap, and keeping the
  mention beats losing it. The covering span then takes part in the overlap rule.
* **Whitespace** around a span is trimmed so entities begin and end on a token
  [``trimmed``]; a span with nothing left is dropped [``empty``].
* **Overlapping and nested entities**: BIO gives every token one tag, so the longest entity
  is kept and, among equally long ones, the one that starts first; an exact repeat of a kept
  entity is dropped as [``duplicate``], any other entity overlapping a kept one as
  [``overlap``].
* **Sentences** come from :class:`galeno.corpus.sentences.ClinicalSentenceSplitter`, the
  corpus stage's splitter, whose boundary offsets map sentences back to the text. An entity
  that crosses a boundary merges the sentences it touches into one [``cross_sentence``
  entities, ``merged_sentences`` boundaries removed], so no entity is cut.
* **Tokens** are runs of letters and digits, or any other single non-space character
  (:data:`galeno.inference.text.TOKEN_PATTERN`), with exact character offsets. An entity boundary inside such a
  token splits the token there [``split_tokens``] (``NºCol`` → ``Nº`` ``Col``), so every
  entity starts at a token start and ends at a token end, and BIO → entities gives back its
  exact span.

CoNLL has no source text, so :func:`read_conll` rebuilds one: tokens joined by single spaces,
sentences by newlines. Lines that are not exactly ``token<TAB>tag`` with a valid tag are
skipped with a warning [``malformed``]; an ``I-X`` that does not continue an ``X`` entity is
rewritten as ``B-X`` (as conlleval would read it) [``bio_repaired``].
"""

from __future__ import annotations

import bisect
import glob
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from galeno.corpus.readers import MalformedXML, read_file, read_xml_file
from galeno.corpus.sentences import ClinicalSentenceSplitter
from galeno.inference.bio import bio_spans
from galeno.inference.text import Sentence, Token, sentences_in

log = logging.getLogger(__name__)

#: Input formats of :func:`read_ner`.
NER_FORMATS = ("conll", "brat", "i2b2xml")
_BLANK = " \t\n\r\x0b\x0c\x85\u00a0\u2028\u2029\ufeff\u200b"
_BIO = re.compile(r"O|[BI]-\S+")
_TOTALS = ("documents", "sentences", "tokens", "entities")


@dataclass(frozen=True, order=True)
class Entity:
    """An entity mention: ``text == document.text[start:end]``."""

    doc_id: str
    start: int
    end: int
    label: str
    text: str


@dataclass
class NERDocument:
    """A document's text, its entities (after the rules above) and its tagged sentences."""

    id: str
    text: str
    entities: list[Entity] = field(default_factory=list)
    sentences: list[Sentence] = field(default_factory=list)
    annotated: list[Entity] = field(default_factory=list)
    """Every distinct annotation as read (nested and overlapping ones included, spans trimmed): the gold of
    the shared tasks' character-span metric, which BIO tags cannot hold in full."""


# --------------------------------------------------------------------------- BIO


def sentences_to_entities(sentences: Sequence[Sentence], tags: Sequence[Sequence[str]],
                          mode: str = "default") -> list[Entity]:
    """Character-offset entities of BIO ``tags`` (one sequence per sentence, e.g. predictions).

    ``mode`` reads ill-formed sequences as :func:`galeno.ner.metrics.bio_spans` does.
    """
    if len(sentences) != len(tags):
        raise ValueError(f"{len(sentences)} sentences but {len(tags)} tag sequences")
    entities = []
    for sentence, sequence in zip(sentences, tags):
        if len(sequence) != len(sentence.tokens):
            raise ValueError(f"{sentence.doc_id}@{sentence.start}: {len(sentence.tokens)} tokens "
                             f"but {len(sequence)} tags")
        for label, first, last in bio_spans(sequence, mode):
            start, end = sentence.tokens[first].start, sentence.tokens[last - 1].end
            text = sentence.text[start - sentence.start:end - sentence.start]
            entities.append(Entity(sentence.doc_id, start, end, label, text))
    return entities


def _repair_bio(tags: list[str]) -> int:
    """Rewrite each ``I-X`` that continues no ``X`` entity as ``B-X``; how many were."""
    repaired = 0
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or tags[i - 1][2:] != tag[2:]):
            tags[i] = "B-" + tag[2:]
            repaired += 1
    return repaired


# --------------------------------------------------------------------------- documents


def _counts(stats: Counter) -> dict[str, int]:
    """Totals always, rule counts only where a rule fired."""
    return {key: n for key, n in sorted(stats.items()) if n or key in _TOTALS}


def _keep_longest(entities: list[Entity], stats: Counter) -> list[Entity]:
    """Non-overlapping entities: longest first, then earliest (module docstring)."""
    kept: list[Entity] = []
    for entity in sorted(entities, key=lambda e: (e.start - e.end, e.start, e.label)):
        clash = next((k for k in kept if k.start < entity.end and entity.start < k.end), None)
        if clash is None:
            kept.append(entity)
        else:
            stats["duplicate" if clash == entity else "overlap"] += 1
    return sorted(kept)


def _check_span(doc_id: str, text: str, start: int, end: int, label: str,
                stats: Counter) -> Entity | None:
    if not 0 <= start <= end <= len(text):
        stats["out_of_range"] += 1
        return None
    inner_start = len(text[start:end]) - len(text[start:end].lstrip(_BLANK)) + start
    inner_end = len(text[inner_start:end].rstrip(_BLANK)) + inner_start
    if inner_start == inner_end:
        stats["empty"] += 1
        return None
    if (inner_start, inner_end) != (start, end):
        stats["trimmed"] += 1
    return Entity(doc_id, inner_start, inner_end, label, text[inner_start:inner_end])


def _sentence_spans(text: str, entities: list[Entity], splitter: ClinicalSentenceSplitter,
                    stats: Counter) -> list[tuple[int, int]]:
    """Splitter sentences as ``(start, end)``, merged where an entity crosses a boundary."""
    starts = splitter.boundaries(text)
    joined = [False] * len(starts)  # joined[i]: sentence i continues sentence i - 1
    for entity in entities:
        first = bisect.bisect_right(starts, entity.start) - 1
        last = bisect.bisect_right(starts, entity.end - 1) - 1
        if first != last:
            stats["cross_sentence"] += 1
            for i in range(first + 1, last + 1):
                joined[i] = True
    stats["merged_sentences"] += sum(joined)
    kept = [start for start, join in zip(starts, joined) if not join]
    return list(zip(kept, kept[1:] + [len(text)]))


def make_document(doc_id: str, text: str, entities: Iterable[Entity],
                  splitter: ClinicalSentenceSplitter | None = None) -> tuple[NERDocument, dict[str, int]]:
    """A document with its entities cleaned, its text split into sentences and BIO-tagged.

    Applies the span, overlap, sentence and token rules of the module docstring; with no
    entities it gives all-``O`` sentences, ready for prediction on raw text.
    """
    stats: Counter = Counter()
    checked = [_check_span(doc_id, text, e.start, e.end, e.label, stats) for e in entities]
    kept = _keep_longest([e for e in checked if e is not None], stats)
    cuts = sorted({offset for e in kept for offset in (e.start, e.end)})
    spans = _sentence_spans(text, kept, splitter or ClinicalSentenceSplitter(), stats)
    sentences = sentences_in(doc_id, text, spans, cuts, stats)
    token_starts = [(t.start, n, i) for n, s in enumerate(sentences) for i, t in enumerate(s.tokens)]
    for entity in kept:
        first = k = bisect.bisect_left(token_starts, (entity.start, -1, -1))
        while k < len(token_starts) and token_starts[k][0] < entity.end:
            _, n, i = token_starts[k]
            sentences[n].tags[i] = ("I-" if k > first else "B-") + entity.label
            k += 1
    stats.update(documents=1, sentences=len(sentences), tokens=len(token_starts), entities=len(kept))
    annotated = sorted({e for e in checked if e is not None})
    return NERDocument(doc_id, text, kept, sentences, annotated), _counts(stats)


# --------------------------------------------------------------------------- sources


def _files(pattern: str | Path, exts: tuple[str, ...]) -> list[str]:
    """Files of a file, directory (searched recursively) or glob, sorted."""
    pattern = str(pattern)
    matches = glob.glob(pattern, recursive=True) if any(c in pattern for c in "*?[") else [pattern]
    files = set()
    for match in matches:
        if os.path.isdir(match):
            files.update(str(p) for p in Path(match).rglob("*") if p.name.lower().endswith(exts))
        elif os.path.isfile(match):
            files.add(match)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(exts)} file matches {pattern!r}")
    return sorted(files)


def _annotation(doc_id: str, text: str, label: str, fragments: list[tuple[int, int]],
                quoted: str | None, stats: Counter) -> Entity | None:
    """An entity from one annotation: out-of-range, text and discontinuity checks."""
    if any(not 0 <= s <= e <= len(text) for s, e in fragments):
        stats["out_of_range"] += 1
        return None
    actual = " ".join(text[s:e] for s, e in fragments)
    if quoted is not None and quoted.split() != actual.split():
        stats["text_mismatch"] += 1
        return None
    if len(fragments) > 1:
        stats["discontinuous"] += 1
    start, end = min(s for s, _ in fragments), max(e for _, e in fragments)
    return Entity(doc_id, start, end, label, text[start:end])


def _warn(path: str, skipped: int, first: int | None) -> None:
    if skipped:
        log.warning("%s: skipped %d malformed line(s), the first at line %s", path, skipped, first)


def _brat_entities(ann_path: str, doc_id: str, text: str, stats: Counter) -> list[Entity]:
    entities = []
    bad_before, first_bad = stats["malformed"], None
    lines = Path(ann_path).read_text(encoding="utf-8-sig", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not line.startswith("T"):
            stats["ignored_annotation"] += 1
            continue
        stats["annotations"] += 1
        parts = line.split("\t")
        head = parts[1].split(" ", 1) if len(parts) >= 2 else []
        try:
            label, spans = head
            fragments = [(int(s), int(e)) for s, e in (f.split() for f in spans.split(";"))]
        except ValueError:
            stats["malformed"] += 1
            first_bad = first_bad or n
            continue
        quoted = "\t".join(parts[2:]) if len(parts) >= 3 else None
        entity = _annotation(doc_id, text, label, fragments, quoted, stats)
        if entity is not None:
            entities.append(entity)
    _warn(ann_path, stats["malformed"] - bad_before, first_bad)
    return entities


def read_brat(pattern: str | Path) -> tuple[list[NERDocument], dict[str, int]]:
    """Documents of brat ``NAME.txt`` + ``NAME.ann`` pairs (a file, a directory or a glob).

    Text-bound (``T``) annotations become entities; a ``.txt`` without its ``.ann`` is a
    document without entities [``missing_ann``], an ``.ann`` without its ``.txt`` is skipped
    [``missing_txt``]. Ids are file stems, as in the corpus stage.
    """
    stats: Counter = Counter()
    splitter = ClinicalSentenceSplitter()
    docs = []
    paths = [p[:-4] + ".txt" if p.lower().endswith(".ann") else p
             for p in _files(pattern, (".txt", ".ann"))]
    for path in sorted(set(paths)):
        if not os.path.exists(path):
            stats["missing_txt"] += 1
            continue
        doc_id = Path(path).stem
        # read_file keeps a leading BOM as U+FEFF: brat offsets count it as a character.
        text = next(iter(read_file(path, "brat", "brat"))).text
        ann_path = path[:-4] + ".ann"
        if os.path.exists(ann_path):
            entities = _brat_entities(ann_path, doc_id, text, stats)
        else:
            stats["missing_ann"] += 1
            entities = []
        doc, counts = make_document(doc_id, text, entities, splitter)
        stats.update(counts)
        docs.append(doc)
    return docs, _counts(stats)


def read_i2b2_xml(pattern: str | Path) -> tuple[list[NERDocument], dict[str, int]]:
    """Documents of MEDDOCAN i2b2-style XML files (a file, a directory or a glob).

    ``<TEXT>`` holds the text; each child of ``<TAGS>`` is an entity with ``start``, ``end``,
    ``TYPE`` (the label; the element name when absent) and the quoted ``text``. A file that
    does not parse is skipped [``malformed_xml``]. Ids are file stems, as for brat.
    """
    stats: Counter = Counter()
    splitter = ClinicalSentenceSplitter()
    docs = []
    for path in _files(pattern, (".xml",)):
        doc_id = Path(path).stem
        try:
            root, _, _ = read_xml_file(path)  # the corpus reader's rule for damaged XML
        except MalformedXML as err:
            log.warning("%s: not well-formed XML, skipped (%s)", path, err)
            stats["malformed_xml"] += 1
            continue
        text = root.findtext("TEXT") or ""
        tags = root.find("TAGS")
        entities = []
        for tag in [] if tags is None else tags:
            if not isinstance(tag.tag, str):  # a comment or processing instruction
                continue
            stats["annotations"] += 1
            try:
                fragments = [(int(tag.get("start")), int(tag.get("end")))]
            except (TypeError, ValueError):
                stats["malformed"] += 1
                continue
            entity = _annotation(doc_id, text, tag.get("TYPE") or tag.tag, fragments, tag.get("text"), stats)
            if entity is not None:
                entities.append(entity)
        doc, counts = make_document(doc_id, text, entities, splitter)
        stats.update(counts)
        docs.append(doc)
    if stats["malformed"]:
        log.warning("%s: skipped %d malformed XML tag(s)", pattern, stats["malformed"])
    return docs, _counts(stats)


def _conll_document(doc_id: str, rows: list[list[tuple[str, str]]], stats: Counter) -> NERDocument:
    """A document from CoNLL sentences: tokens joined by spaces, sentences by newlines."""
    sentences, offset = [], 0
    for rows_of_sentence in rows:
        tokens = []
        for word, _ in rows_of_sentence:
            tokens.append(Token(word, offset, offset + len(word)))
            offset += len(word) + 1
        tags = [tag for _, tag in rows_of_sentence]
        stats["bio_repaired"] += _repair_bio(tags)
        text = " ".join(word for word, _ in rows_of_sentence)
        sentences.append(Sentence(doc_id, tokens, tags, tokens[0].start, text))
    entities = sentences_to_entities(sentences, [s.tags for s in sentences], mode="strict")
    stats.update(documents=1, sentences=len(sentences), tokens=sum(len(s.tokens) for s in sentences),
                 entities=len(entities))
    return NERDocument(doc_id, "\n".join(s.text for s in sentences), entities, sentences)


def read_conll(pattern: str | Path) -> tuple[list[NERDocument], dict[str, int]]:
    """Documents of 2-column CoNLL files (``token<TAB>tag``, a blank line between sentences).

    A file is one document (id: the file stem) unless ``-DOCSTART-`` lines divide it
    (ids ``STEM:1``, ``STEM:2``...).
    """
    stats: Counter = Counter()
    docs = []
    for path in _files(pattern, (".conll", ".tsv", ".txt")):
        stem = Path(path).stem
        groups: list[list[list[tuple[str, str]]]] = [[]]
        sentence: list[tuple[str, str]] = []
        bad_before, first_bad, has_docstart = stats["malformed"], None, False
        lines = Path(path).read_text(encoding="utf-8-sig", errors="replace").splitlines()
        for n, line in enumerate([*lines, ""], 1):
            fields = line.split("\t") if "\t" in line else line.split()
            if fields and fields[0] == "-DOCSTART-":
                if sentence:
                    groups[-1].append(sentence)
                sentence, has_docstart = [], True
                groups.append([])
            elif not "".join(fields).strip():
                if sentence:
                    groups[-1].append(sentence)
                sentence = []
            elif len(fields) == 2 and fields[0].strip() and _BIO.fullmatch(fields[1].strip()):
                sentence.append((fields[0].strip(), fields[1].strip()))
            else:
                stats["malformed"] += 1
                first_bad = first_bad or n
        _warn(path, stats["malformed"] - bad_before, first_bad)
        groups = [g for g in groups if g]
        for n, group in enumerate(groups, 1):
            docs.append(_conll_document(f"{stem}:{n}" if has_docstart else stem, group, stats))
    return docs, _counts(stats)


def detect_format(path: str | Path) -> str:
    name = str(path).lower()
    if os.path.isdir(path):
        names = {p.suffix.lower() for p in Path(path).rglob("*.*")}
        for fmt, suffix in (("brat", ".ann"), ("i2b2xml", ".xml"), ("conll", ".conll")):
            if suffix in names:
                return fmt
    elif name.endswith((".conll", ".tsv")):
        return "conll"
    elif name.endswith((".ann", ".txt")):
        return "brat"
    elif name.endswith(".xml"):
        return "i2b2xml"
    raise ValueError(f"cannot tell the NER format of {path!r}; pass fmt (one of {', '.join(NER_FORMATS)})")


def read_ner(path: str | Path, fmt: str | None = None) -> tuple[list[NERDocument], dict[str, int]]:
    """Documents and stats of ``path`` (file, directory or glob) in ``fmt``: conll, brat or i2b2xml.

    With ``fmt=None`` the format follows the extension (``.conll``/``.tsv``, ``.txt``/``.ann``,
    ``.xml``), or for a directory the files in it (``.ann`` first, then ``.xml``, ``.conll``).
    """
    fmt = fmt or detect_format(path)
    readers = {"conll": read_conll, "brat": read_brat, "i2b2xml": read_i2b2_xml}
    if fmt not in readers:
        raise ValueError(f"unknown NER format {fmt!r}; expected one of {', '.join(NER_FORMATS)}")
    return readers[fmt](path)


def write_brat(doc: NERDocument, entities: Iterable[Entity], out_dir: str | Path) -> Path:
    """Write ``doc.text`` as ``ID.txt`` and ``entities`` as ``ID.ann`` under ``out_dir``.

    Each entity is one ``T`` line (``T1<TAB>Label start end<TAB>text``, whitespace in the
    text's line breaks written as spaces, as brat does); the ``.ann`` path is returned. The pair reads
    back with :func:`read_brat`, e.g. to score predictions with brat-based tools.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{doc.id}.txt", "w", encoding="utf-8", newline="") as fh:
        fh.write(doc.text)
    lines = [f"T{n}\t{e.label} {e.start} {e.end}\t{' '.join(doc.text[e.start:e.end].splitlines())}\n"
             for n, e in enumerate(sorted(entities), 1)]
    ann = out / f"{doc.id}.ann"
    with open(ann, "w", encoding="utf-8", newline="") as fh:
        fh.writelines(lines)
    return ann
