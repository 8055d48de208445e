"""Train the byte-level BPE tokenizer (RoBERTa special tokens) on a cleaned corpus.

    python jobs/train_tokenizer.py --config configs/tokenizer/sample.yaml
    python jobs/train_tokenizer.py --corpus DIR --output DIR [--vocab-size 52000] [key.path=value ...]
    ray job submit --working-dir . -- python jobs/train_tokenizer.py --config configs/tokenizer/shared.yaml

`python jobs/train_tokenizer.py --help` lists every config field.
"""

from galeno.tokenizer import main

if __name__ == "__main__":
    main()
