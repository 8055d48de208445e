"""Score a token-classification model on CoNLL, brat or i2b2 XML data; prints JSON.

    python jobs/evaluate_ner.py --model artifacts/ner/pharmaconer/seed-42/best --data ../shared/data/pharmaconer/dev.conll
"""

from galeno.ner.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
