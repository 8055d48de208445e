"""Tag every document of some sources with a token-classification model, on Ray Data (actor pool).

    python jobs/predict_ner.py --model models:/galeno-ner-meddocan@champion \
        --source notes=brat:'notes/**/*.txt' --output artifacts/predictions/notes
    ray job submit --working-dir . --runtime-env configs/ray/runtime-env.yaml -- \
        python jobs/predict_ner.py --model models:/galeno-ner-meddocan@champion \
        --source notes=text:/mnt/shared/notes --output /mnt/shared/predictions/notes actors=8 num_gpus=1
"""

from galeno.ner.cli import predict_main

if __name__ == "__main__":
    predict_main()
