"""Fine-tune a pretrained encoder for NER on the shared training loop (Ray Train, or world size 1).

    python jobs/finetune_ner.py --config configs/ner/pharmaconer.yaml --model artifacts/pretrain/tiny-cpu/model
    python jobs/finetune_ner.py --config configs/ner/pharmaconer.yaml --config configs/ner/best.yaml \
        --model models:/galeno-mlm@champion

`python jobs/finetune_ner.py --help` lists every config field.
"""

from galeno.ner.cli import finetune_main

if __name__ == "__main__":
    finetune_main()
