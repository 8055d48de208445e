"""Run the whole chain — corpus, tokenizer, pretraining, NER, promotion, Serve — one stage after another.

    python jobs/pipeline.py --config configs/pipeline/demo.yaml
    python jobs/pipeline.py --config configs/pipeline/demo.yaml start_from=ner

`python jobs/pipeline.py --help` lists every config field.
"""

from galeno.pipeline import main

if __name__ == "__main__":
    main()
