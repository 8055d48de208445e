"""De-identify a folder of clinical notes (Ray Data actor pool): identifiers become [LABEL] (docs/deid.md).

    python jobs/deidentify.py --model models:/galeno-ner-meddocan-deid@champion \
        --source notes=text:'notes/**/*.txt' --output artifacts/deidentified/notes
    python jobs/deidentify.py --model rules --source notes=brat:notes/ --output /tmp/masked

`python jobs/deidentify.py --help` lists every config field.
"""

from galeno.deid.cli import main

if __name__ == "__main__":
    main()
