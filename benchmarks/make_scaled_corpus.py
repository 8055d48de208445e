"""Scale the shared data up to a crawl-sized JSONL corpus for throughput benchmarks.

    python benchmarks/make_scaled_corpus.py --mb 200            # -> artifacts/bench/corpus-200mb-s0-v1/data/
    python benchmarks/make_scaled_corpus.py --mb 2 --seed 1

The real documents of ``../shared/data`` (MEDDOCAN train+dev clinical cases, SciELO es/pt/fr
abstracts, PharmaCoNER sentences regrouped into pseudo-documents of ~10 sentences) are
replicated until the target size with a deterministic mix that looks like a web crawl of the
same domain rather than 40 copies of one corpus:

* ``original``: every real document once, spread over the corpus (at most 30% of it).
* ``variant`` (most documents): the sentences of a base document, re-ordered with a few
  sentences of another document of the same corpus spliced in, and ~15% of the words edited
  (adjacent swaps, deletions, substitutions, changed numbers). Such documents share little of
  their word 5-grams with any other document, so MinHash keeps them.
* ``near`` (planted near-duplicates): an earlier output document with ~3% of its words edited.
* ``exact`` (planted exact duplicates): an earlier output document, verbatim.
* boilerplate: a fraction of documents get a few crawl lines (cookie banners, menus,
  copyright) before or after the body, the lines sentence dedup is meant to remove.

Output: ``data/part-NNNNN.jsonl`` (``{"id", "text"}`` per line; the file count is a multiple
of 4 so both pipelines can spread them evenly over 2 workers) and ``stats.json`` beside
``data/`` (a reader given the folder must see JSONL only). Same
arguments, same bytes; the folder is reused when it already holds a complete corpus.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

GENERATOR_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_ROOT = REPO / "artifacts" / "bench"

MODES = (("variant", 0.72), ("near", 0.20), ("exact", 0.08))
BOILERPLATE_RATE = 0.3
VARIANT_EDIT_RATE = 0.15
NEAR_EDIT_RATE = 0.03

BOILERPLATE = [
    "Inicio | Quiénes somos | Servicios | Contacto | Aviso legal",
    "Utilizamos cookies propias y de terceros para mejorar nuestros servicios. Si continúa navegando, consideramos que acepta su uso.",
    "© 2023 Todos los derechos reservados.",
    "Compartir en Facebook Compartir en Twitter Enviar por correo electrónico",
    "Suscríbase a nuestro boletín para recibir las últimas novedades.",
    "Política de privacidad · Política de cookies · Mapa del sitio",
    "Leer más »",
    "Este sitio web utiliza cookies. Aceptar Rechazar Configurar",
    "Artículos relacionados",
    "Iniciar sesión | Registrarse",
    "Volver arriba ↑",
    "Copyright © 2022 Revista de Medicina. ISSN 0000-0000.",
]


# --------------------------------------------------------------------------- base documents
def _meddocan(data: Path) -> list[tuple[str, str]]:
    docs = []
    for split in ("train", "dev"):
        for path in sorted(glob.glob(str(data / "meddocan" / split / "brat" / "*.txt"))):
            text = Path(path).read_text(encoding="utf-8").strip()
            if text:
                docs.append((f"meddocan/{split}/{Path(path).stem}", text))
    return docs


def _scielo(data: Path) -> list[tuple[str, str]]:
    docs = []
    for path in sorted(glob.glob(str(data / "scielo" / "*.bioc.xml"))):
        lang = Path(path).name.split("-")[0]
        for doc in ET.parse(path).getroot().iter("document"):
            doc_id = (doc.findtext("id") or "").strip()
            passages = []
            for passage in doc.iter("passage"):
                sents = [t.text.strip() for t in passage.iter("text") if t.text and t.text.strip()]
                if sents:
                    passages.append(" ".join(sents))
            if passages:
                docs.append((f"scielo/{lang}/{doc_id}", "\n".join(passages)))
    return docs


_DETOK = [(re.compile(r" ([.,;:!?%)\]])"), r"\1"), (re.compile(r"([(\[¿¡]) "), r"\1")]


def _pharmaconer(data: Path, per_doc: int = 10) -> list[tuple[str, str]]:
    docs = []
    for split in ("train", "dev"):
        sents, tokens = [], []
        for line in (data / "pharmaconer" / f"{split}.conll").read_text(encoding="utf-8").splitlines():
            if line.strip():
                tokens.append(line.split("\t")[0])
            elif tokens:
                sents.append(" ".join(tokens))
                tokens = []
        if tokens:
            sents.append(" ".join(tokens))
        for pat, rep in _DETOK:
            sents = [pat.sub(rep, s) for s in sents]
        for i in range(0, len(sents), per_doc):
            docs.append((f"pharmaconer/{split}/{i // per_doc:05d}", " ".join(sents[i:i + per_doc])))
    return docs


def base_documents(data: Path = DEFAULT_DATA) -> list[tuple[str, str]]:
    """(id, text) of every real document, in a fixed order."""
    return _meddocan(data) + _scielo(data) + _pharmaconer(data)


# --------------------------------------------------------------------------- perturbations
_DIGIT = re.compile(r"\d")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-ZÁÉÍÓÚÑ¿¡])")


def edit_words(line: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    """Edit about ``rate`` of the words of a line: swap, delete, substitute, or renumber."""
    words = line.split(" ")
    n = len(words)
    if n < 2 or rate <= 0:
        return line
    edits = int(rate * n) + (rng.random() < rate * n - int(rate * n))
    for _ in range(edits):
        if len(words) < 2:
            break
        i = rng.randrange(len(words))
        op = rng.random()
        if _DIGIT.search(words[i]) and op < 0.5:
            words[i] = _DIGIT.sub(lambda _: str(rng.randrange(10)), words[i])
        elif op < 0.4:
            j = min(i + 1, len(words) - 1)
            words[i], words[j] = words[j], words[i]
        elif op < 0.7:
            del words[i]
        else:
            words[i] = rng.choice(vocab)
    return " ".join(words)


def edit_text(text: str, rate: float, rng: random.Random, vocab: list[str]) -> str:
    return "\n".join(edit_words(line, rate, rng, vocab) for line in text.split("\n"))


def variant(base: str, other: str, rng: random.Random, vocab: list[str]) -> str:
    """A new document of the same style: base sentences re-ordered, some spliced in, edited."""
    paras = base.split("\n")
    donor = [s for s in _SENT.split(other.replace("\n", " ")) if s]
    out = []
    for para in paras:
        sents = _SENT.split(para)
        if len(sents) > 2 and rng.random() < 0.5:  # local re-ordering keeps the style plausible
            k = rng.randrange(len(sents) - 1)
            sents[k], sents[k + 1] = sents[k + 1], sents[k]
        if donor and rng.random() < 0.3:
            sents.insert(rng.randrange(len(sents) + 1), rng.choice(donor))
        out.append(edit_words(" ".join(sents), VARIANT_EDIT_RATE, rng, vocab))
    return "\n".join(out)


def add_boilerplate(text: str, rng: random.Random) -> str:
    head = rng.sample(BOILERPLATE, rng.randint(0, 2))
    tail = rng.sample(BOILERPLATE, rng.randint(1, 3))
    return "\n".join(head + [text] + tail)


# --------------------------------------------------------------------------- corpus
def corpus_dir(mb: float, seed: int, root: Path = DEFAULT_ROOT) -> Path:
    return root / f"corpus-{mb:g}mb-s{seed}-v{GENERATOR_VERSION}"


def data_dir(corpus: Path) -> Path:
    """The folder holding only the corpus's JSONL files (what both pipelines read)."""
    return corpus / "data"


def n_files_for(mb: float) -> int:
    """A multiple of 4 of about 8 MB files (4 at least): even splits over 2 workers."""
    return max(4, 4 * math.ceil(mb / 32))


def make_corpus(mb: float = 200, seed: int = 0, data: Path = DEFAULT_DATA,
                root: Path = DEFAULT_ROOT, force: bool = False) -> Path:
    """Write (or reuse) the scaled corpus; returns its folder."""
    out = corpus_dir(mb, seed, root)
    stats_path = out / "stats.json"
    if stats_path.exists() and not force:
        return out
    folder = data_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.jsonl"):
        old.unlink()

    rng = random.Random(seed)
    base = base_documents(data)
    by_corpus: dict[str, list[int]] = {}
    for i, (doc_id, _) in enumerate(base):
        by_corpus.setdefault(doc_id.split("/")[0], []).append(i)
    vocab = sorted({w for _, t in base[:: max(1, len(base) // 300)] for w in t.split() if w.isalpha()})
    target = int(mb * 2**20)
    n_files = n_files_for(mb)

    files = [open(folder / f"part-{k:05d}.jsonl", "w", encoding="utf-8") for k in range(n_files)]
    counts = {"original": 0, "variant": 0, "near": 0, "exact": 0, "with_boilerplate": 0}
    written = text_bytes = n = 0
    emitted: list[str] = []  # reservoir of earlier outputs to plant duplicates of
    order = list(range(len(base)))
    originals = rng.sample(order, len(base))
    next_original = n_variants = 0
    # Every real document appears once, spread over the corpus (at most 30% of it, so a small
    # corpus still has the crawl mix).
    mean_bytes = sum(len(t.encode("utf-8")) for _, t in base) / len(base)
    p_original = min(0.3, len(base) / (target / mean_bytes))
    mode_names, mode_weights = zip(*MODES)
    try:
        while written < target:
            if next_original < len(base) and rng.random() < p_original:
                doc_id, text = base[originals[next_original]]
                next_original += 1
                mode = "original"
            else:
                mode = rng.choices(mode_names, mode_weights)[0]
                if mode != "variant" and not emitted:
                    mode = "variant"
                if mode == "variant":
                    if n_variants % len(base) == 0:
                        rng.shuffle(order)
                    b = order[n_variants % len(base)]
                    n_variants += 1
                    src_id, src_text = base[b]
                    other = base[rng.choice(by_corpus[src_id.split("/")[0]])][1]
                    text = variant(src_text, other, rng, vocab)
                    doc_id = f"{src_id}#v{n}"
                elif mode == "near":
                    text = edit_text(rng.choice(emitted), NEAR_EDIT_RATE, rng, vocab)
                    doc_id = f"near#{n}"
                else:
                    text = rng.choice(emitted)
                    doc_id = f"exact#{n}"
                if rng.random() < BOILERPLATE_RATE:
                    text = add_boilerplate(text, rng)
                    counts["with_boilerplate"] += 1
            counts[mode] += 1
            if len(emitted) < 5000:
                emitted.append(text)
            elif rng.random() < 0.05:
                emitted[rng.randrange(len(emitted))] = text
            line = json.dumps({"id": f"bench-{n:08d}-{doc_id}", "text": text},
                              ensure_ascii=False) + "\n"
            # Documents go round-robin over the files, so every file has the same mix.
            files[n % n_files].write(line)
            written += len(line.encode("utf-8"))
            text_bytes += len(text.encode("utf-8"))
            n += 1
    finally:
        for f in files:
            f.close()
    stats = {
        "generator_version": GENERATOR_VERSION, "seed": seed, "target_mb": mb,
        "documents": n, "bytes": written, "text_bytes": text_bytes, "files": n_files,
        "base_documents": len(base), "modes": counts,
        "mix": dict(MODES), "boilerplate_rate": BOILERPLATE_RATE,
        "variant_edit_rate": VARIANT_EDIT_RATE, "near_edit_rate": NEAR_EDIT_RATE,
    }
    tmp = stats_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(tmp, stats_path)  # stats.json last: its presence marks a complete corpus
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200, help="target size in MiB of JSONL")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--force", action="store_true", help="regenerate even if cached")
    args = ap.parse_args()
    out = make_corpus(args.mb, args.seed, args.data, args.root, args.force)
    print(out)
    print((out / "stats.json").read_text())


if __name__ == "__main__":
    main()
