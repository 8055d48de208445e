"""Pretrain a RoBERTa masked LM on the cleaned corpus with Ray Train + DeepSpeed.

    python jobs/pretrain.py --config configs/pretrain/tiny-cpu.yaml --corpus artifacts/corpus-sample \
        --tokenizer artifacts/tokenizer-sample
    python jobs/pretrain.py --config configs/pretrain/tiny-cpu.yaml --corpus artifacts/corpus-sample \
        --tokenizer artifacts/tokenizer-sample trainer.launcher=local   # no Ray, world size 1
    ray job submit --working-dir . --runtime-env configs/ray/runtime-env.yaml -- \
        python jobs/pipeline.py --config configs/pipeline/roberta-base-16xv100.yaml  # corpus, tokenizer, pretraining

`python jobs/pretrain.py --help` lists every config field.
"""

from galeno.train.cli import main

if __name__ == "__main__":
    main()
