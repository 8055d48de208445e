"""The Serve endpoints on a real local Serve over real HTTP, with tiny models built here (no downloads).

One application is started for the module (FillMask, NER, Ingress on the session's 2-CPU Ray);
the tests talk to it with httpx. The model code is also checked on its own, without Serve.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.builders import random_tagger, tiny_models
from tests.conftest import free_port

httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CONLL = REPO / "data" / "sample" / "pharmaconer" / "train.conll"
MEDDOCAN_DEV = REPO / "data" / "sample" / "meddocan" / "dev" / "brat"
WORD = re.compile(r"[^\W_]+|[^\s\ufeff\u200b]")  # galeno.inference.text.TOKEN_PATTERN
APP = "galeno-test"
# Serve's callers and replicas push autoscaling metrics every 10 s by default; 1 s keeps the scaling test short
RAY_ENV = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
           "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return tiny_models(tmp_path_factory.mktemp("serve-models"))


def _args(models: dict[str, Path], **extra) -> dict:
    """The application's args (a ServeConfig overlay) for the 2-CPU test Ray."""
    return {
        "fill_mask_model": str(models["mlm"]), "ner_model": str(models["ner"]),
        "max_length": 64, "stride": 4, "request_timeout_s": 30,
        "limits": {"max_chars": 3000, "max_texts": 4, "max_top_k": 20, "max_body_bytes": 20_000},
        "fill_mask": {"num_cpus": 0.5, "max_ongoing_requests": 8, "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}},
        "ner": {"num_cpus": 0.5, "max_ongoing_requests": 8, "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05,
                                                                      "forward_batch_size": 4}},
        **extra,
    }


def _deploy(args: dict, deployments: list | None = None, timeout: float = 240) -> None:
    """Deploy the application from a Serve config, as `serve deploy` does (the controller builds it with
    galeno.serve.app:app_builder), and wait until it runs."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from galeno.serve.config import IMPORT_PATH

    app = {"name": APP, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args}
    if deployments:
        app["deployments"] = deployments
    before = serve.status().applications.get(APP)
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))

    def running() -> bool:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "DEPLOY_FAILED":
            pytest.fail(f"deploy failed: {status.message}")
        # this config's deployment (not the previous one still running), every old replica gone
        return (status is not None and status.status == "RUNNING"
                and (before is None or status.last_deployed_time_s > before.last_deployed_time_s)
                and all(d.status == "HEALTHY" and set(d.replica_states) <= {"RUNNING"}
                        for d in status.deployments.values()))

    time.sleep(1)
    _wait_for(running, timeout, lambda: f"{APP} did not run this config: {serve.status().applications.get(APP)}")


def _wait_for(predicate, timeout: float, what) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` with ``what`` (a text, or a callable giving one)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what() if callable(what) else what}: not within {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(ray_local, models):
    """The application on a local Serve at a free port; Serve is shut down after the module (Ray stays)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    args = _args(models)
    _deploy(args)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    yield {"client": client, "args": args, "models": models}
    client.close()
    serve.shutdown()


def _post(client, path: str, body) -> httpx.Response:
    return client.post(path, json=body)


def _assert_entities(text: str, entities: list[dict]) -> None:
    for e in entities:
        assert text[e["start"]:e["end"]] == e["text"], e
        assert 0.0 <= e["score"] <= 1.0


# --------------------------------------------------------------------------- model code, no Serve
def test_model_code_offsets_windows_and_strategies(models):
    """NER on a long sentence (several windows) and every strategy; fill-mask's window and sequence."""
    from galeno.inference.fill_mask import InputError, fill_mask_batch
    from galeno.inference.loading import load_fill_mask, load_ner
    from galeno.inference.source import ModelSource
    from galeno.inference.token_classification import predict_entities

    ner = load_ner(ModelSource(str(models["ner"]), str(models["ner"])), max_length=64)
    long_text = "  Paciente  con " + " ".join(f"palabra{i}, dolor" for i in range(60)) + ".\nÚltima línea: p53 (3 mg)."
    short = "Ácido acetilsalicílico 100 mg 🙂 y enalapril."
    for strategy in ("simple", "first", "average", "max"):
        (entities_long, entities_short), = predict_entities(ner, [([long_text, short], strategy)], stride=4, chunk=3)
        for text, entities in ((long_text, entities_long), (short, entities_short)):
            _assert_entities(text, entities)
            # every word tagged B-X: one entity per word token, in order
            assert [e["text"] for e in entities] == WORD.findall(text)
            assert {e["label"] for e in entities} == {"X"}

    mlm = load_fill_mask(ModelSource(str(models["mlm"]), str(models["mlm"])), max_length=64)
    long_mask = "dolor " * 200 + "la <mask> arterial" + " fiebre" * 200
    texts = [("El único antecedente era la <mask> arterial.", 3), (long_mask, 2), ("sin máscara", 2), ("<mask> y <mask>", 2)]
    good, long, none, two = fill_mask_batch(mlm, texts, chunk=2)
    assert len(good["candidates"]) == 3 and len(long["candidates"]) == 2
    start = good["mask"]["start"]
    for c in good["candidates"]:
        assert c["sequence"].startswith("El único antecedente era la ") and c["sequence"].endswith(" arterial.")
        assert c["sequence"][start:].startswith(c["token"])
    assert [c["score"] for c in good["candidates"]] == sorted((c["score"] for c in good["candidates"]), reverse=True)
    assert isinstance(none, InputError) and none.code == "no_mask"
    assert isinstance(two, InputError) and two.code == "too_many_masks"


def _partitions(n: int, max_rows: int):
    """Every split of range(n) into contiguous passes of at most max_rows."""
    if n == 0:
        yield []
        return
    for first in range(1, min(n, max_rows) + 1):
        for rest in _partitions(n - first, max_rows):
            yield [(0, first)] + [(a + first, b + first) for a, b in rest]


def test_forward_passes_split_where_padding_costs_more_than_a_pass():
    """plan_chunks is the cheapest split (checked against every split) under its cost model, keeps a long
    sequence from padding short ones, and with no overhead is fixed passes of max_rows."""
    import random

    from galeno.inference.forward import plan_chunks

    def cost(plan, lengths, overhead):
        return sum(overhead + (b - a) * lengths[b - 1] for a, b in plan)

    rng = random.Random(7)
    for _ in range(60):
        lengths = sorted(rng.randint(1, 128) for _ in range(rng.randint(1, 8)))
        max_rows, overhead = rng.randint(1, 8), rng.choice([1, 16, 64, 500])
        plan = plan_chunks(lengths, max_rows, overhead)
        assert [a for a, _ in plan] == [0] + [b for _, b in plan[:-1]] and plan[-1][1] == len(lengths)
        assert all(b - a <= max_rows for a, b in plan)
        assert cost(plan, lengths, overhead) == min(cost(p, lengths, overhead)
                                                    for p in _partitions(len(lengths), max_rows))
    assert len(plan_chunks([10] * 7, 3, 64)) == 3                              # equal lengths: fewest passes
    assert plan_chunks([9, 10, 12, 118], 32, 64) == [(0, 3), (3, 4)]          # the long one alone
    assert plan_chunks([9, 10, 12, 118], 32, 0) == [(0, 4)]                   # no overhead: fixed passes
    assert plan_chunks([9, 10, 12, 118], 2, 0) == [(0, 2), (2, 4)]
    assert plan_chunks([], 8, 64) == []


def test_passes_do_not_change_the_answers(models):
    """The same NER and fill-mask answers whatever the split into forward passes."""
    from galeno.inference.fill_mask import fill_mask_batch
    from galeno.inference.loading import load_fill_mask, load_ner
    from galeno.inference.source import ModelSource
    from galeno.inference.token_classification import predict_entities

    ner = load_ner(ModelSource(str(models["ner"]), str(models["ner"])), max_length=64)
    texts = ["Dolor.", "Paciente con " + " ".join(f"palabra{i}" for i in range(40)) + ".", "Fiebre alta y tos.",
             "Ácido acetilsalicílico 100 mg."]
    items = [([t], "simple") for t in texts]
    fixed = predict_entities(ner, items, stride=4, chunk=32, overhead_tokens=0)
    assert predict_entities(ner, items, stride=4, chunk=32, overhead_tokens=8) == fixed
    mlm = load_fill_mask(ModelSource(str(models["mlm"]), str(models["mlm"])), max_length=64)
    masked = [("la <mask> arterial.", 3), ("Paciente con " + "fiebre " * 30 + "y <mask>.", 3), ("<mask> alta.", 3)]
    one, split = fill_mask_batch(mlm, masked, 32, 0), fill_mask_batch(mlm, masked, 32, 8)
    for a, b in zip(one, split):
        assert [c["token"] for c in a["candidates"]] == [c["token"] for c in b["candidates"]]
        assert [c["score"] for c in a["candidates"]] == pytest.approx([c["score"] for c in b["candidates"]], abs=1e-5)


def test_int8_quantised_models_answer_like_the_saved_ones(models):
    """quantize: int8 swaps every Linear layer for a dynamically quantised one; the answers keep their
    structure (the biased test tagger still tags every word, fill-mask ranks close to the fp32 model)."""
    import torch

    from galeno.inference.fill_mask import fill_mask_batch
    from galeno.inference.loading import load_fill_mask, load_ner
    from galeno.inference.source import ModelSource
    from galeno.inference.token_classification import predict_entities

    source = ModelSource(str(models["ner"]), str(models["ner"]))
    ner = load_ner(source, max_length=64, quantize="int8")
    assert ner.info()["quantize"] == "int8" and not any(
        type(m) is torch.nn.Linear for m in ner.model.modules())  # noqa: E721 (exact type: subclasses are the quantised ones)
    text = "Ácido acetilsalicílico 100 mg y enalapril."
    ((entities,),) = predict_entities(ner, [([text], "simple")], stride=4)
    _assert_entities(text, entities)
    assert [e["text"] for e in entities] == WORD.findall(text)
    mlm_source = ModelSource(str(models["mlm"]), str(models["mlm"]))
    fp32, int8 = (fill_mask_batch(load_fill_mask(mlm_source, 64, quantize=q), [("la <mask> arterial.", 5)])[0]
                  for q in ("", "int8"))
    assert len(int8["candidates"]) == 5
    assert fp32["candidates"][0]["score"] == pytest.approx(int8["candidates"][0]["score"], abs=0.05)
    with pytest.raises(ValueError, match="quantize"):
        load_ner(source, max_length=64, quantize="int4")


def test_bfloat16_models_and_the_fill_mask_head_on_the_mask_alone(models):
    """dtype bfloat16 casts the model and the answers keep their structure; fill-mask runs its head on
    the mask's position alone and gets what the full forward pass gives there."""
    import numpy as np
    import torch

    from galeno.inference.fill_mask import fill_mask_batch
    from galeno.inference.forward import forward_probs, mlm_parts
    from galeno.inference.loading import load_fill_mask, load_ner
    from galeno.inference.source import ModelSource
    from galeno.inference.token_classification import predict_entities

    source = ModelSource(str(models["ner"]), str(models["ner"]))
    ner = load_ner(source, max_length=64, dtype="bfloat16")
    assert ner.info()["dtype"] == "bfloat16" and {p.dtype for p in ner.model.parameters()} == {torch.bfloat16}
    text = "Ácido acetilsalicílico 100 mg y enalapril."
    ((entities,),) = predict_entities(ner, [([text], "simple")], stride=4)
    _assert_entities(text, entities)
    assert [e["text"] for e in entities] == WORD.findall(text)

    mlm_source = ModelSource(str(models["mlm"]), str(models["mlm"]))
    mlm = load_fill_mask(mlm_source, 64)
    assert mlm_parts(mlm.model) is not None  # RobertaForMaskedLM: roberta + lm_head
    ids = mlm.tokenizer(["la <mask> arterial.", "El <mask> es largo, más largo que el otro."])["input_ids"]
    positions = [row.index(mlm.tokenizer.mask_token_id) for row in ids]
    full = forward_probs(mlm, ids, chunk=2)
    alone = forward_probs(mlm, ids, chunk=2, positions=positions)
    for row, at, one in zip(full, positions, alone):
        np.testing.assert_allclose(row[at], one, atol=1e-6)
    fp32, bf16 = (fill_mask_batch(load_fill_mask(mlm_source, 64, dtype=d), [("la <mask> arterial.", 5)])[0]
                  for d in ("", "bfloat16"))
    assert len(bf16["candidates"]) == 5
    assert fp32["candidates"][0]["score"] == pytest.approx(bf16["candidates"][0]["score"], abs=0.05)
    with pytest.raises(ValueError, match="GPU replicas"):
        load_ner(source, max_length=64, dtype="float16")  # a CPU replica
    with pytest.raises(ValueError, match="cannot be combined"):
        load_ner(source, max_length=64, quantize="int8", dtype="bfloat16")


def test_onnxruntime_models_answer_like_torch(models):
    """runtime: onnxruntime exports the model to ONNX Runtime when it loads: float32 gives torch's
    probabilities (any batch, any padding), the same entities and fill-mask candidates, and the same
    dev F1 through jobs/evaluate_ner.py's code; int8 keeps the answers' structure."""
    import numpy as np

    from galeno.ner.data import read_conll
    from galeno.ner.evaluate import evaluate
    from galeno.inference.fill_mask import fill_mask_batch
    from galeno.inference.forward import forward_probs
    from galeno.inference.loading import load_fill_mask, load_ner
    from galeno.inference.source import ModelSource
    from galeno.inference.token_classification import predict_entities

    source = ModelSource(str(models["ner"]), str(models["ner"]))
    torch_ner, ort_ner = load_ner(source, 64), load_ner(source, 64, runtime="onnxruntime")
    info = ort_ner.info()
    assert info["runtime"] == "onnxruntime" and info["onnx"]["onnx_mb"] > 0 and torch_ner.info()["runtime"] == "torch"
    ids = torch_ner.tokenizer(["Dolor torácico.", "Ácido acetilsalicílico 100 mg y enalapril cada 12 horas.", "a"])
    for a, b in zip(forward_probs(torch_ner, ids["input_ids"], chunk=3), forward_probs(ort_ner, ids["input_ids"], chunk=3)):
        np.testing.assert_allclose(a, b, atol=1e-4)  # three lengths in one padded pass
    text = "Ácido acetilsalicílico 100 mg y enalapril. Dolor torácico intenso."
    ours, theirs = (predict_entities(m, [([text], "average")], stride=4) for m in (ort_ner, torch_ner))
    assert [[(e["label"], e["start"], e["end"]) for e in group] for group in ours[0]] == \
        [[(e["label"], e["start"], e["end"]) for e in group] for group in theirs[0]]
    int8 = load_ner(source, 64, quantize="int8", runtime="onnxruntime")
    ((entities,),) = predict_entities(int8, [([text], "simple")], stride=4)
    _assert_entities(text, entities)
    assert [e["text"] for e in entities] == WORD.findall(text) and int8.info()["quantize"] == "int8"

    docs, _ = read_conll(SAMPLE_CONLL)
    docs = docs[:3]
    scores = [evaluate(str(models["ner"]), docs, "conll", max_length=64, runtime=r)[0]["default"]["f1"]
              for r in ("torch", "onnxruntime")]
    assert scores[0] == pytest.approx(scores[1])

    mlm_source = ModelSource(str(models["mlm"]), str(models["mlm"]))
    masked = [("la <mask> arterial.", 5), ("Paciente con fiebre y <mask> en el pecho.", 5)]
    torch_mlm, ort_mlm = load_fill_mask(mlm_source, 64), load_fill_mask(mlm_source, 64, runtime="onnxruntime")
    for a, b in zip(fill_mask_batch(torch_mlm, masked), fill_mask_batch(ort_mlm, masked)):
        assert [c["token_id"] for c in a["candidates"]] == [c["token_id"] for c in b["candidates"]]
        assert [c["score"] for c in a["candidates"]] == pytest.approx([c["score"] for c in b["candidates"]], abs=1e-4)
    full = ort_mlm.model(**torch_mlm.tokenizer(["la <mask> arterial."], return_tensors="pt")).logits
    assert full.shape[-1] == torch_mlm.model.config.vocab_size  # the whole model, head on every position
    with pytest.raises(ValueError, match="runtime"):
        load_ner(source, 64, runtime="tensorrt")
    with pytest.raises(ValueError, match="onnxruntime runs float32"):
        load_ner(source, 64, dtype="bfloat16", runtime="onnxruntime")


def test_local_preset_is_a_serve_config_and_a_job_preset(models):
    from ray.serve.schema import ServeDeploySchema

    from galeno.serve.app import app_builder
    from galeno.serve.config import IMPORT_PATH, load_preset

    path = REPO / "configs" / "serve" / "local.yaml"
    data = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(data)
    assert data["applications"][0]["import_path"] == IMPORT_PATH
    cfg = load_preset(path, ("ner.max_replicas=2",))
    assert cfg.ner.max_replicas == 2 and cfg.port == data["http_options"]["port"]
    # `make serve` serves what promotion chose (a rollback with promote --force moves it), not `latest`
    from galeno.inference.source import split_models_uri
    from galeno.pipeline import PromoteConfig

    for uri in (cfg.fill_mask_model, cfg.ner_model):
        assert split_models_uri(uri)[1:] == (PromoteConfig().alias, "alias"), uri
    assert cfg.fill_mask.max_ongoing_requests >= cfg.fill_mask.batch.max_batch_size
    # what `serve run ... fill_mask_model=PATH ner.max_replicas=2` hands the builder: strings, dotted keys
    app = app_builder({"fill_mask_model": str(models["mlm"]), "ner.max_replicas": "2", "ner_model": str(models["ner"])})
    assert app is not None


def test_serve_on_an_empty_registry_says_what_to_run_within_seconds(tmp_path, monkeypatch):
    """No replica starts for a model that is not registered: one line naming `make demo` and the promote
    command, a non-zero exit, in seconds. The check creates the embedded store, once, before any replica."""
    from galeno.serve.cli import main

    monkeypatch.setenv("GALENO_HOME", str(tmp_path / "home"))
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        main(["--fill-mask-model", "models:/galeno-mlm@champion", "--ner-model", "models:/galeno-ner-x@champion"])
    message = str(exit_.value.code)
    assert time.monotonic() - start < 30
    assert "models:/galeno-mlm@champion cannot be served" in message and "make demo" in message
    assert "python jobs/promote.py --model galeno-mlm --version N" in message and "\n" not in message
    assert (tmp_path / "home" / "mlflow" / "mlflow.db").is_file()


def test_config_refuses_a_batch_larger_than_max_ongoing_requests():
    from galeno.config import ConfigError, load
    from galeno.serve.config import ServeConfig

    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        load(ServeConfig, None, ["ner.max_ongoing_requests=4", "ner.batch.max_batch_size=8"])
    with pytest.raises(ConfigError, match="CPU replicas"):
        load(ServeConfig, None, ["ner.quantize=int8", "ner.num_gpus=1"])
    with pytest.raises(ConfigError, match="quantize"):
        load(ServeConfig, None, ["fill_mask.quantize=fp8"])
    with pytest.raises(ConfigError, match="GPU replicas"):
        load(ServeConfig, None, ["ner.dtype=float16"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        load(ServeConfig, None, ["ner.dtype=bfloat16", "ner.quantize=int8"])
    with pytest.raises(ConfigError, match="runtime"):
        load(ServeConfig, None, ["ner.runtime=openvino"])
    with pytest.raises(ConfigError, match="CPU replicas"):
        load(ServeConfig, None, ["fill_mask.runtime=onnxruntime", "fill_mask.num_gpus=1"])
    assert load(ServeConfig, None, ["ner.runtime=onnxruntime", "ner.quantize=int8"]).ner.runtime == "onnxruntime"
    assert load(ServeConfig, None, ["ner.dtype=float16", "ner.num_gpus=1"]).ner.dtype == "float16"


# --------------------------------------------------------------------------- HTTP
def test_fill_mask(served):
    client = served["client"]
    text = "El único antecedente personal a reseñar era la <mask> arterial."
    r = _post(client, "/fill-mask", {"text": text, "top_k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"uri": str(Path(served["models"]["mlm"]).resolve()), "name": None, "version": None}
    assert len(body["candidates"]) == 4
    assert text[body["mask"]["start"]:body["mask"]["end"]] == "<mask>"
    for c in body["candidates"]:
        assert set(c) == {"token", "token_id", "token_str", "score", "sequence"}
        assert c["sequence"].startswith("El único antecedente personal a reseñar era la ")
        assert c["sequence"].endswith(" arterial.")
    assert "fill-mask=" in r.headers["x-galeno-models"]


def test_ner_text_and_texts(served):
    client = served["client"]
    text = "Se detectó sobreexpresión de la proteína p53 en la biopsia hepática.\n\nTratamiento: cisplatino 50 mg/m²."
    r = _post(client, "/ner", {"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["aggregation_strategy"] == "simple" and "results" not in body
    _assert_entities(text, body["entities"])
    assert [e["text"] for e in body["entities"]] == WORD.findall(text)
    texts = ["Dolor torácico.", "  Fiebre de 39 ºC y tos  ", "Sin hallazgos."]
    r = _post(client, "/ner", {"texts": texts, "aggregation_strategy": "max"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for t, result in zip(texts, results):
        _assert_entities(t, result["entities"])
        assert [e["text"] for e in result["entities"]] == WORD.findall(t)


def test_decomposed_accents_and_invisible_characters_read_as_the_corpus_wrote_them(served):
    """NFD text (a letter, then a combining accent), a zero-width space and CRLF: the models read the text
    normalised as the corpus was, the answers are those of the NFC text, and every offset is into the text
    sent, on grapheme boundaries (never between a letter and its accent)."""
    import unicodedata

    client = served["client"]
    composed = "Se pidió fibrinógeno, urea y creatinina.\nSin alteración hepática."
    sent = unicodedata.normalize("NFD", composed).replace("urea", "ur\u200bea").replace("\n", "\r\n")
    assert sent != composed and len(sent) > len(composed)
    expected = client.post("/ner", json={"text": composed}).json()["entities"]
    got = client.post("/ner", json={"text": sent}).json()["entities"]
    _assert_entities(sent, got)
    assert [unicodedata.normalize("NFC", e["text"]).replace("\u200b", "") for e in got] == [e["text"] for e in expected]
    assert "fibrinógeno" in [unicodedata.normalize("NFC", e["text"]) for e in got]
    assert [e["label"] for e in got] == [e["label"] for e in expected]
    for e in got:  # no span starts on, or ends before, a combining mark
        assert not unicodedata.combining(sent[e["start"]]), e
        assert e["end"] == len(sent) or not unicodedata.combining(sent[e["end"]]), e
    masked = "El paciente presentó una reacción <mask> grave."
    nfd = unicodedata.normalize("NFD", masked)
    plain = client.post("/fill-mask", json={"text": masked, "top_k": 5}).json()
    decomposed = client.post("/fill-mask", json={"text": nfd, "top_k": 5}).json()
    assert [c["token_id"] for c in decomposed["candidates"]] == [c["token_id"] for c in plain["candidates"]]
    start, end = decomposed["mask"]["start"], decomposed["mask"]["end"]
    assert nfd[start:end] == "<mask>"
    assert all(c["sequence"] == nfd[:start] + c["sequence"][start:len(c["sequence"]) - (len(nfd) - end)] + nfd[end:]
               for c in decomposed["candidates"])


def test_concurrent_requests_each_get_their_own_answer(served):
    """Requests batched together come back to their own callers (distinct inputs, checked one by one)."""
    client = served["client"]

    def fill(i: int):
        text = f"Paciente número {i} con <mask> de {i} días."
        r = _post(client, "/fill-mask", {"text": text, "top_k": 2})
        assert r.status_code == 200, r.text
        return all(c["sequence"].startswith(f"Paciente número {i} con ") and c["sequence"].endswith(f" de {i} días.")
                   for c in r.json()["candidates"])

    def ner(i: int):
        text = " ".join(f"w{i}x{k}" for k in range(i + 1)) + "."
        r = _post(client, "/ner", {"text": text})
        assert r.status_code == 200, r.text
        entities = r.json()["entities"]
        _assert_entities(text, entities)
        return [e["text"] for e in entities] == WORD.findall(text)

    with ThreadPoolExecutor(12) as pool:
        fills = [pool.submit(fill, i) for i in range(16)]
        ners = [pool.submit(ner, i) for i in range(16)]
        assert all(f.result() for f in fills)
        assert all(f.result() for f in ners)


BAD = [
    # (path, raw body or JSON, status, error code)
    ("/fill-mask", {"text": ""}, 422, "empty_text"),
    ("/fill-mask", {"text": "   \n "}, 422, "empty_text"),
    ("/fill-mask", {"text": "sin máscara"}, 422, "no_mask"),
    ("/fill-mask", {"text": "la <mask> y la <mask>"}, 422, "too_many_masks"),
    ("/fill-mask", {"text": "la <mask>", "top_k": 0}, 422, "bad_top_k"),
    ("/fill-mask", {"text": "la <mask>", "top_k": 21}, 422, "bad_top_k"),
    ("/fill-mask", {"text": "la <mask>", "top_k": "5"}, 422, "invalid_request"),
    ("/fill-mask", {"text": 123}, 422, "invalid_request"),
    ("/fill-mask", {"top_k": 3}, 422, "invalid_request"),
    ("/fill-mask", {"text": "la <mask>", "extra": 1}, 422, "invalid_request"),
    ("/fill-mask", ["la <mask>"], 422, "invalid_request"),
    ("/fill-mask", {"text": "a" * 3001 + "<mask>"}, 413, "text_too_long"),
    ("/fill-mask", b'{"text": "la <mask>', 422, "invalid_request"),
    ("/fill-mask", b"not json at all", 422, "invalid_request"),
    ("/fill-mask", b'{"text": "la \xff\xfe <mask>"}', 400, "invalid_encoding"),
    ("/fill-mask", b'{"text": "la \\ud800 <mask>"}', 422, "invalid_text"),
    ("/fill-mask", json.dumps({"text": "x" * 30_000}).encode(), 413, "body_too_large"),
    ("/ner", {}, 422, "text_or_texts"),
    ("/ner", {"text": "a", "texts": ["b"]}, 422, "text_or_texts"),
    ("/ner", {"texts": []}, 422, "empty_text"),
    ("/ner", {"texts": ["uno", ""]}, 422, "empty_text"),
    ("/ner", {"texts": ["a", "b", "c", "d", "e"]}, 413, "too_many_texts"),
    ("/ner", {"texts": "un texto"}, 422, "invalid_request"),
    ("/ner", {"texts": ["a", 3]}, 422, "invalid_request"),
    ("/ner", {"text": "dolor", "aggregation_strategy": "mean"}, 422, "invalid_request"),
    ("/ner", {"text": "é" * 3001}, 413, "text_too_long"),
]


def test_bad_input_answers_4xx_json_and_the_replicas_survive(served):
    client = served["client"]
    for path, body, status, code in BAD:
        if isinstance(body, bytes):
            r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            r = _post(client, path, body)
        assert r.status_code == status, (path, body if len(str(body)) < 200 else "long", r.text)
        answer = r.json()
        assert answer["error"] == code and answer["message"], answer
        assert "x-galeno-models" in r.headers
    r = client.get("/no-such-route")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    # messages name the problem, never the text
    assert "sin máscara" not in _post(client, "/fill-mask", {"text": "sin máscara"}).text
    assert _post(client, "/fill-mask", {"text": "la <mask> arterial"}).status_code == 200
    assert _post(client, "/ner", {"text": "dolor abdominal"}).status_code == 200


def test_healthz_models_page_and_openapi(served):
    client = served["client"]
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["waiting"] == []
    assert {k: m["path"] for k, m in ready.json()["models"].items()} == {
        "fill-mask": str(Path(served["models"]["mlm"]).resolve()), "ner": str(Path(served["models"]["ner"]).resolve())}
    models = client.get("/models").json()
    assert models["fill-mask"]["path"] == str(Path(served["models"]["mlm"]).resolve())
    assert models["fill-mask"]["mask_token"] == "<mask>" and models["fill-mask"]["version"] is None
    assert models["ner"]["labels"] == ["O", "B-X", "I-X"] and models["ner"]["run_id"] is None
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "A la exploración &lt;mask&gt; destaca abdomen blando y depresible." in page.text
    assert "<script>" in page.text and " src=" not in page.text and 'href="http' not in page.text  # no external assets
    schema = client.get("/openapi.json").json()
    assert {"/fill-mask", "/ner", "/models", "/healthz", "/readyz"} <= set(schema["paths"])
    assert "FillMaskRequest" in schema["components"]["schemas"]


def test_readyz_answers_503_while_a_model_cannot_serve(served, tmp_path):
    """A second application whose NER model cannot load: its ingress is up (/healthz 200) and its /readyz
    answers 503 naming the model that is not ready, while the served application stays ready."""
    from ray import serve

    from galeno.config import load
    from galeno.serve.app import build_app
    from galeno.serve.config import ServeConfig

    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no weights, no tokenizer: every replica start fails
    args = {**served["args"], "ner_model": str(broken), "fill_mask_model": ""}
    cfg = load(ServeConfig, None, extra=args)
    serve._run(build_app(cfg), name="broken", route_prefix="/broken", _blocking=False)  # serve.run waits for RUNNING
    client = served["client"]
    try:
        deadline = time.monotonic() + 120
        while True:
            r = client.get("/broken/readyz")
            if r.status_code in (200, 503) and "status" in r.json():
                break
            assert time.monotonic() < deadline, f"/broken/readyz never answered: {r.status_code} {r.text[:200]}"
            time.sleep(1)
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.json()["waiting"] == ["ner"], r.text
        assert client.get("/broken/healthz").status_code == 200  # alive, not ready
        assert client.get("/readyz").status_code == 200  # the other application is unaffected
    finally:
        serve.delete("broken")


def _browser():
    """Headless Debian chromium driven by Selenium (chromium-driver), or a skip naming what is missing."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install galeno[dev])")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


def _pixels(png: bytes, rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    """Pixels of a screenshot within ``tolerance`` of ``rgb`` on every channel."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(n for n, c in image.getcolors(image.width * image.height)
               if all(abs(a - b) <= tolerance for a, b in zip(c, rgb)))


def test_the_page_in_headless_chromium(served, tmp_path):
    """The try-it page in a real browser: a click sends the pre-filled NER example, the entities come back
    highlighted inline at the API's offsets, a click on the fill-mask button fills the candidates table,
    and a screenshot of the NER output shows the highlight colour."""
    browser = _browser()  # skips first where selenium or chromium is missing
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from galeno.serve.page import NER_EXAMPLE

    try:
        browser.get(f"{served['client'].base_url}/")
        browser.find_element(By.ID, "ner-go").click()
        WebDriverWait(browser, 30).until(lambda b: "entidades" in b.find_element(By.ID, "ner-model").text)
        # the test model tags every word B-X: one mark per word, each the word itself, labelled X
        marks = browser.execute_script(
            "return Array.from(document.querySelectorAll('#ner-out mark'), m => [m.firstChild.textContent, "
            "m.querySelector('small').textContent])")
        assert marks == [[word, "X"] for word in WORD.findall(NER_EXAMPLE)]
        shown = browser.execute_script(  # the output without the labels is the input, character for character
            "const o = document.getElementById('ner-out').cloneNode(true); o.querySelectorAll('small')"
            ".forEach(s => s.remove()); return o.textContent")
        assert shown == NER_EXAMPLE
        shot = browser.find_element(By.ID, "ner-out").screenshot_as_png
        (tmp_path / "ner.png").write_bytes(shot)
        assert _pixels(shot, (0xFF, 0xE0, 0x8A)) > 2000  # mark { background: #ffe08a }

        browser.find_element(By.ID, "fm-go").click()
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#fm-out tr")) == 6)
        rows = browser.find_elements(By.CSS_SELECTOR, "#fm-out tr")
        assert rows[0].text.split() == ["token", "score", "secuencia"]
        assert all("depresible." in r.text for r in rows[1:])  # each filled sequence is the example's
        assert not browser.find_elements(By.CSS_SELECTOR, ".err")
    finally:
        browser.quit()


def test_reconfigure_reloads_running_replicas_in_place(served):
    """A new user_config alone (a Serve config's deployments override) reconfigures the running replica:
    here it names another model, on ONNX Runtime in int8; a new `reload` value makes it resolve the
    same URI again, with the deployment's own settings (torch)."""
    client, args = served["client"], served["args"]
    before = client.get("/models").json()["ner"]
    assert before["runtime"] == "torch"
    try:
        _deploy(args, [{"name": "NER", "user_config": {"reload": "2", "model": str(served["models"]["ner2"]),
                                                        "runtime": "onnxruntime", "quantize": "int8"}}])
        after = client.get("/models").json()["ner"]
        assert after["path"] == str(Path(served["models"]["ner2"]).resolve()) and after["labels"] == ["O", "B-Y", "I-Y"]
        assert (after["runtime"], after["quantize"]) == ("onnxruntime", "int8") and after["onnx"]["build_s"] > 0
        assert after["replica"] == before["replica"], "the replica was replaced instead of reconfigured"
        text = "Dolor torácico intenso. Fiebre alta."
        r = _post(client, "/ner", {"text": text})
        entities = r.json()["entities"]
        _assert_entities(text, entities)
        assert [(e["label"], e["text"]) for e in entities] == [("Y", "Dolor torácico intenso."), ("Y", "Fiebre alta.")]
        assert r.json()["model"]["uri"] == after["path"]
    finally:
        _deploy(args, [{"name": "NER", "user_config": {"reload": "3"}}])
    after = client.get("/models").json()["ner"]
    assert after["labels"] == ["O", "B-X", "I-X"] and after["replica"] == before["replica"]
    assert after["runtime"] == "torch" and "onnx" not in after


def test_registered_model_serve_and_evaluation_give_the_same_entities(served, tmp_path, monkeypatch):
    """One predictor (galeno.inference) behind the registered MLflow model, a Serve replica and
    jobs/evaluate_ner.py: identical entities on the sample's MEDDOCAN dev documents."""
    import shutil

    import mlflow

    from galeno.inference.text import split_text
    from galeno.ner.cli import evaluate_main
    from galeno.ner.data import read_brat
    from galeno.registry import register_model
    from galeno.tracking import TrackingConfig

    model = random_tagger(served["models"]["ner"], tmp_path / "tagger")
    docs, _ = read_brat(MEDDOCAN_DEV)
    # evaluation predicts the annotated sentences, a request the sentences of its raw text: they are the same
    # words where no entity crosses a sentence or splits a word, so those documents are compared
    same = [d for d in docs if len(d.text) <= served["args"]["limits"]["max_chars"]
            and [s.words for s in d.sentences] == [s.words for s in split_text(d.id, d.text)]]
    assert len(same) >= 3, [d.id for d in docs]
    dev = tmp_path / "dev"
    dev.mkdir()
    for d in same:
        for suffix in (".txt", ".ann"):
            shutil.copy(MEDDOCAN_DEV / f"{d.id}{suffix}", dev)

    evaluate_main(["--model", str(model), "--data", str(dev), "--format", "brat", "--max-length", "64",
                   "--stride", "32", "--write-brat", str(tmp_path / "predicted")])
    predicted = {d.id: d for d in read_brat(tmp_path / "predicted")[0]}
    by_evaluation = [{(e.label, e.start, e.end) for e in predicted[d.id].entities} for d in same]

    monkeypatch.setenv("GALENO_HOME", str(tmp_path / "home"))
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = register_model(model, "galeno-ner-same", kind="ner", cfg=cfg)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    registered = mlflow.pyfunc.load_model(f"models:/galeno-ner-same/{version}")
    by_registry = [{(e["entity_group"], e["start"], e["end"]) for e in found}
                   for found in registered.predict([d.text for d in same])]

    client, args = served["client"], served["args"]
    try:
        _deploy(args, [{"name": "NER", "user_config": {"reload": "same", "model": str(model), "stride": 32}}])
        by_serve = []
        for d in same:
            r = _post(client, "/ner", {"text": d.text})
            assert r.status_code == 200, r.text
            by_serve.append({(e["label"], e["start"], e["end"]) for e in r.json()["entities"]})
    finally:
        _deploy(args, [{"name": "NER", "user_config": {"reload": "back"}}])
    assert sum(len(e) for e in by_evaluation) > 10 and len({label for e in by_evaluation for label, _, _ in e}) == 2
    assert by_registry == by_evaluation
    assert by_serve == by_evaluation


def test_a_moved_alias_is_followed_with_no_failed_request(served):
    """A replica serving models:/NAME@champion asks the registry every follow_alias_s where the alias
    points. Moving it while callers keep sending requests swaps the new version into the *same* replica,
    and every request is answered 200, by one version or the other. Redeploys the app (args change)."""
    from galeno.registry import promote, register_model

    client, models = served["client"], served["models"]
    name = "galeno-ner-serve-test"
    v1 = register_model(models["ner"], name, kind="ner")
    v2 = register_model(models["ner2"], name, kind="ner")
    promote(name, v1, force=True, reason="test")
    _deploy(_args(models, ner_model=f"models:/{name}@champion", follow_alias_s=0.5))
    before = client.get("/models").json()["ner"]
    assert before["version"] == v1 and before["labels"] == ["O", "B-X", "I-X"]
    text = "Dolor torácico intenso. Fiebre alta."
    stop, answers = False, []

    def keep_calling() -> None:
        while not stop:
            r = _post(client, "/ner", {"text": text})
            answers.append((r.status_code, r.json().get("model", {}).get("version"),
                            {e["label"] for e in r.json().get("entities", [])}))

    with ThreadPoolExecutor(2) as pool:
        callers = [pool.submit(keep_calling) for _ in range(2)]
        try:
            _wait_for(lambda: len(answers) >= 4, 30, "no answers before the move")
            promote(name, v2, force=True, reason="test")
            _wait_for(lambda: client.get("/models").json()["ner"]["version"] == v2, 30,
                      "the replica did not follow the alias to the new version")
            n = len(answers)
            _wait_for(lambda: len(answers) >= n + 4, 30, "no answers after the move")
        finally:
            stop = True
        for f in callers:
            f.result()
    assert {code for code, _, _ in answers} == {200}, answers
    # each answer names the version that made it, and its labels are that version's
    assert {(v, frozenset(labels)) for _, v, labels in answers} == {(v1, frozenset({"X"})), (v2, frozenset({"Y"}))}
    after = client.get("/models").json()["ner"]
    assert after["replica"] == before["replica"], "the replica was replaced instead of following the alias"


# --------------------------------------------------------------------------- load (last: it redeploys the app)
def _replicas(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    return app.deployments[deployment].replica_states.get("RUNNING", 0) if app else 0


def test_backpressure_autoscaling_and_timeout(served):
    """A burst beyond NER's queue answers 503 with Retry-After at once (never queues forever); load above
    the target scales NER out to its max replicas and, once it stops, back in; an answer slower than
    request_timeout_s is a 504. Every other request is answered normally."""
    client, models = served["client"], served["models"]
    ner = {"num_cpus": 0.5, "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
           "upscale_delay_s": 0, "downscale_delay_s": 2, "look_back_period_s": 2,
           "max_ongoing_requests": 1, "max_queued_requests": 2,
           "batch": {"max_batch_size": 1, "batch_wait_timeout_s": 0, "forward_batch_size": 4}}
    _deploy(_args(models, ner=ner))
    assert _replicas("NER") == 1
    long_texts = [" ".join(f"palabra{i}{k}" for k in range(250)) for i in range(4)]  # ~70 windows: slow enough

    def call(_=None) -> httpx.Response:
        return _post(client, "/ner", {"texts": long_texts})

    with ThreadPoolExecutor(24) as pool:
        burst = list(pool.map(call, range(24)))
    codes = [r.status_code for r in burst]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    refused = next(r for r in burst if r.status_code == 503)
    assert refused.json()["error"] == "overloaded" and int(refused.headers["retry-after"]) >= 1

    # sustained load: four callers in a loop until the autoscaler has added the second replica
    stop, seen = False, []

    def keep_calling() -> None:
        while not stop:
            seen.append(call().status_code)

    with ThreadPoolExecutor(4) as pool:
        loaders = [pool.submit(keep_calling) for _ in range(4)]
        try:
            _wait_for(lambda: _replicas("NER") == 2, 60, "NER did not scale out to 2 replicas under load")
        finally:
            stop = True
        for f in loaders:
            f.result()
    assert set(seen) <= {200, 503} and 200 in seen
    _wait_for(lambda: _replicas("NER") == 1, 60, "NER did not scale back in to 1 replica after the load")
    assert call().status_code == 200

    _deploy(_args(models, request_timeout_s=0.001))
    r = call()
    assert r.status_code == 504 and r.json()["error"] == "timeout", r.text
    assert client.get("/healthz").status_code == 200  # the ingress itself still answers at once
