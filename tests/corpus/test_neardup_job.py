"""Near-copies go as whole documents, through the whole corpus job (issue 21, item 1).

Planted pairs from real CANTEMIST clinical cases: a republished copy with a date line added and
about 1% of its words changed, and a copy whose paragraphs are shuffled as well. Exactly one
document of each pair must come out, whole, and the other be rejected as a near (or exact)
duplicate of it: no fragment of the copy may survive. Before the fix, repeated-sentence removal
ran first and cut the copy down to its changed sentences, which then no longer looked like the
original and came out as a fragment.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAIRS = 8


def _changed(text: str, rng: random.Random, share: float = 0.01) -> str:
    """About ``share`` of the words replaced by other Spanish words."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(share * len(words)))):
        words[i] = rng.choice(["además", "entonces", "posteriormente", "también", "nuevamente"])
    return " ".join(words)


@pytest.fixture(scope="module")
def planted(shared_data: Path, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = shared_data / "cantemist" / "background"
    if not folder.is_dir():
        pytest.skip(f"needs the CANTEMIST background set under {folder}")
    rng = random.Random(7)
    texts = [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))[:200]]
    texts = [t for t in texts if t.count("\n") >= 3 and len(t.split()) >= 300][:3 * PAIRS]
    assert len(texts) == 3 * PAIRS
    records, pair_of = [], {}
    for n, text in enumerate(texts):
        records.append({"id": f"orig-{n:02d}", "text": text})
        if n >= 2 * PAIRS:
            continue  # a document with no copy
        copy = f"Publicado el {n + 1} de marzo de 2024 a las 10:{n:02d} horas.\n" + _changed(text, rng)
        if n >= PAIRS:  # and its paragraphs shuffled
            paragraphs = copy.split("\n")
            rng.shuffle(paragraphs)
            copy = "\n".join(paragraphs)
        records.append({"id": f"copy-{n:02d}", "text": copy})
        pair_of[f"orig-{n:02d}"], pair_of[f"copy-{n:02d}"] = f"copy-{n:02d}", f"orig-{n:02d}"
    rng.shuffle(records)
    root = tmp_path_factory.mktemp("planted")
    (root / "crawl.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return root, pair_of


def test_near_copies_are_dropped_whole_by_the_job(planted, tmp_path):
    import pyarrow.parquet as pq

    root, pair_of = planted
    out = tmp_path / "corpus"
    run = subprocess.run([sys.executable, "jobs/clean_corpus.py", "--source", f"crawl=jsonl:{root / 'crawl.jsonl'}",
                          "--output", str(out), "ray.num_cpus=2"], capture_output=True, text=True, cwd=REPO,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    kept = {r["id"]: r for f in sorted((out / "documents").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    rejected = {r["id"]: r for f in sorted((out / "rejected").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    assert len(kept) + len(rejected) == 3 * PAIRS + 2 * PAIRS  # every id accounted for
    for n in range(2 * PAIRS):
        orig, copy = f"orig-{n:02d}", f"copy-{n:02d}"
        survivors = [i for i in (orig, copy) if i in kept]
        assert len(survivors) == 1, (orig, copy, survivors, {i: rejected.get(i, {}).get("reason") for i in (orig, copy)})
        gone = pair_of[survivors[0]]
        assert rejected[gone]["reason"] in ("near_duplicate", "exact_duplicate"), rejected[gone]
        assert rejected[gone]["duplicate_of"] == survivors[0]
    for n in range(2 * PAIRS, 3 * PAIRS):  # the documents without a copy all stay, whole
        assert f"orig-{n:02d}" in kept
        assert kept[f"orig-{n:02d}"]["n_words"] >= 250


#: A footer that varies (an issue number, a date) and that no sentence filter knows as boilerplate.
BANNER = ("Este artículo forma parte del boletín de la Sociedad Española de Oncología Médica, edición número "
          "{count} publicada el {date} para sus socios y suscriptores.")


def test_fuzzy_line_dedup_drops_boilerplate_that_varies(shared_data, tmp_path):
    """A footer with a date and a counter differs in every document, so exact sentence dedup keeps it
    everywhere; with ``line_dedup.fuzzy`` only its first copy (smallest key) stays."""
    import pyarrow.parquet as pq

    folder = shared_data / "cantemist" / "background"
    if not folder.is_dir():
        pytest.skip(f"needs the CANTEMIST background set under {folder}")
    texts = [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))[200:212]]
    lines = [json.dumps({"id": f"page-{n:02d}", "text": t.rstrip() + "\n" + BANNER.format(
        date=f"{n + 1}/0{n % 9 + 1}/2024", count=1000 + 37 * n)}, ensure_ascii=False) for n, t in enumerate(texts)]
    (tmp_path / "crawl.jsonl").write_text("\n".join(lines) + "\n")
    with_banner = {}
    for fuzzy in (False, True):
        out = tmp_path / f"out-{fuzzy}"
        run = subprocess.run([sys.executable, "jobs/clean_corpus.py", "--source", f"crawl=jsonl:{tmp_path / 'crawl.jsonl'}",
                              "--output", str(out), "ray.num_cpus=2", f"line_dedup.fuzzy={str(fuzzy).lower()}"],
                             capture_output=True, text=True, cwd=REPO, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        docs = {r["id"]: r["text"] for f in sorted((out / "documents").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
        assert len(docs) == len(texts)  # every page stays: only the banner goes
        with_banner[fuzzy] = sorted(i for i, t in docs.items() if "boletín de la Sociedad" in t)
        manifest = json.loads((out / "manifest.json").read_text())
        dropped = manifest["total"]["sentence_drops"].get("fuzzy_duplicate_line", 0)
        # with fuzzy on, every banner but the first goes (and perhaps a formulaic clinical sentence)
        assert (dropped >= len(texts) - 1) if fuzzy else dropped == 0, manifest["total"]["sentence_drops"]
    assert len(with_banner[False]) == len(texts)
    assert with_banner[True] == ["page-00"]
