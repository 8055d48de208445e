"""Serve the fill-mask and NER models over HTTP with Ray Serve; prints the URL and blocks (Ctrl-C stops).

    python jobs/serve.py --fill-mask-model models:/galeno-mlm@champion --ner-model models:/galeno-ner-pharmaconer@champion
    python jobs/serve.py --config configs/serve/local.yaml --once      # one request per model, print, exit
    serve run configs/serve/local.yaml                                 # Ray's own CLI, same application
    ray job submit --runtime-env configs/ray/runtime-env.yaml -- python jobs/serve.py --config configs/serve/local.yaml

`python jobs/serve.py --help` lists every config field.
"""

import sys

from galeno.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
