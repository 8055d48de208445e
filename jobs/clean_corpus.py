"""Clean, deduplicate and decontaminate corpora into a Spanish pretraining corpus (Ray Data).

    python jobs/clean_corpus.py --config configs/corpus/sample.yaml
    python jobs/clean_corpus.py --source NAME=FORMAT:PATH_OR_GLOB [--source ...] \
        [--decontaminate PATH ...] --output DIR [key.path=value ...]
    ray job submit --working-dir . -- python jobs/clean_corpus.py --config configs/corpus/shared.yaml

`python jobs/clean_corpus.py --help` lists every config field.
"""

from galeno.corpus.cli import main

if __name__ == "__main__":
    main()
