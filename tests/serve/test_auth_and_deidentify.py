"""Locked endpoints and POST /deidentify, on a real local Serve over real HTTP (issue 24, items 4 and 7).

The application serves a de-identification deployment (a tiny tagger built here that tags every
word ``B-X``, kept through ``deid_keep_labels`` so that what is replaced is exactly what the rules
find) behind API keys: one key from a hash file, one from an environment variable, and a key with
a low rate for the 429.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from galeno.serve.auth import AuthConfig, Limiter, hash_key, load_keys
from tests.builders import tiny_models
from tests.conftest import free_port
from tests.serve.test_app import _deploy

httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve")

REPO = Path(__file__).resolve().parents[2]
#: A key known only to this test, passed to the Serve controller (where the application is built) as a hash.
ENV_KEY = "glk_test-environment-key-0123456789abcdef"
RAY_ENV = {"GALENO_TEST_API_KEYS": f"bob:{hash_key(ENV_KEY)}"}
NOTE = ("Paciente con NHC 4521879, ingresa el 14/03/2021. Teléfono 612 345 678, "
        "correo jolmedo@correo.es.")


@pytest.fixture(scope="module")
def locked(ray_local, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("locked")
    models = tiny_models(root / "models")
    keys_file = root / "api-keys"
    made = {}
    for name, rate in (("alice", None), ("carol", "2")):
        out = subprocess.run([sys.executable, str(REPO / "jobs" / "api_keys.py"), "add", name, "--file", str(keys_file)]
                             + (["--rate", rate] if rate else []), capture_output=True, text=True, check=True)
        made[name] = out.stdout.strip()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    _deploy({"deid_model": str(models["ner"]), "deid_keep_labels": ["X"], "max_length": 64, "stride": 4,
             "deid": {"num_cpus": 0.5}, "limits": {"max_chars": 3000, "max_texts": 4},
             "auth": {"mode": "keys", "keys_file": str(keys_file), "keys_env": "GALENO_TEST_API_KEYS",
                      "rate_per_minute": 6000, "burst": 3}})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    yield {"client": client, "keys": made, "keys_file": keys_file}
    client.close()
    serve.shutdown()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_no_key_401_wrong_key_403_open_paths_stay_open(locked):
    client = locked["client"]
    r = client.post("/deidentify", json={"text": NOTE})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/models").status_code == 401 and client.get("/readyz").status_code == 401
    r = client.post("/deidentify", json={"text": NOTE}, headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert r.status_code == 401
    r = client.post("/deidentify", json={"text": NOTE}, headers=_bearer("glk_not-a-key"))
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert client.get("/healthz").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="api-key"' in page.text and "Authorization" in page.text
    assert client.get("/openapi.json").status_code == 200


def test_keys_are_stored_as_hashes_only(locked):
    text = locked["keys_file"].read_text()
    for key in locked["keys"].values():
        assert key.startswith("glk_") and key not in text and hash_key(key) in text
    assert oct(locked["keys_file"].stat().st_mode & 0o777) == "0o600"


def test_deidentify_replaces_identifiers_with_their_labels(locked):
    client = locked["client"]
    r = client.post("/deidentify", json={"text": NOTE}, headers=_bearer(locked["keys"]["alice"]))
    assert r.status_code == 200, r.text
    body = r.json()
    result = body["result"]
    assert body["model"]["uri"]
    for identifier in ("4521879", "14/03/2021", "612 345 678", "jolmedo@correo.es"):
        assert identifier not in result["text"]
    for label in ("[ID_SUJETO_ASISTENCIA]", "[FECHAS]", "[NUMERO_TELEFONO]", "[CORREO_ELECTRONICO]"):
        assert label in result["text"]
    assert result["text"].startswith("Paciente con NHC [ID_SUJETO_ASISTENCIA], ingresa el [FECHAS].")
    rebuilt, at = [], 0  # the masked text is the input with each span replaced by [label], in order
    for span in result["spans"]:
        assert NOTE[span["start"]:span["end"]] == span["text"] and span["by"] != "model"
        rebuilt += [NOTE[at:span["start"]], f"[{span['label']}]"]
        at = span["end"]
    assert "".join(rebuilt) + NOTE[at:] == result["text"]
    # the model's X spans are kept (deid_keep_labels), never where something was replaced
    assert result["kept"] and all(k["label"] == "X" for k in result["kept"])
    assert all(k["end"] <= s["start"] or k["start"] >= s["end"] for k in result["kept"] for s in result["spans"])
    many = client.post("/deidentify", json={"texts": [NOTE, "Sin datos."]}, headers=_bearer(locked["keys"]["alice"]))
    assert many.status_code == 200 and [r["text"] for r in many.json()["results"]][1] == "Sin datos."


def test_a_key_from_the_environment_works(locked):
    r = locked["client"].post("/deidentify", json={"text": NOTE}, headers=_bearer(ENV_KEY))
    assert r.status_code == 200


def test_a_key_over_its_rate_gets_429_with_retry_after(locked):
    client, key = locked["client"], locked["keys"]["carol"]  # 2 per minute, bursts of 3
    answers = [client.post("/deidentify", json={"text": "Sin datos."}, headers=_bearer(key)) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert answers[3].status_code == 429 and answers[3].json()["error"] == "rate_limited"
    assert 1 <= int(answers[3].headers["retry-after"]) <= 30
    # another key is not slowed down by carol's
    assert client.post("/deidentify", json={"text": "Sin datos."}, headers=_bearer(locked["keys"]["alice"])).status_code == 200


def test_limiter_refills_at_the_rate():
    limiter = Limiter(burst=2)
    assert limiter.take("k", 60, now=0.0) == 0 and limiter.take("k", 60, now=0.0) == 0
    assert limiter.take("k", 60, now=0.0) == pytest.approx(1.0)
    assert limiter.take("k", 60, now=1.0) == 0


def test_no_keys_only_on_loopback(tmp_path, monkeypatch):
    from galeno.serve.config import ServeConfig

    with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0 without API keys"):
        ServeConfig(ner_model="x", host="0.0.0.0")
    ServeConfig(ner_model="x", host="::1")
    ServeConfig(ner_model="x", host="0.0.0.0", auth=AuthConfig(mode="keys"))
    # the job says so in one line before it starts anything
    out = subprocess.run([sys.executable, str(REPO / "jobs" / "serve.py"), "--ner-model", str(tmp_path), "host=0.0.0.0"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "refusing to serve on 0.0.0.0 without API keys" in out.stderr
    # keys mode with no key at all is refused when the application is built
    from galeno.serve.app import build_app

    monkeypatch.delenv("GALENO_API_KEYS", raising=False)
    with pytest.raises(ValueError, match="no key hashes were found"):
        build_app(ServeConfig(ner_model=str(tmp_path), auth=AuthConfig(mode="keys")))
    bad = tmp_path / "keys"
    bad.write_text("alice glk_the-key-itself\n")
    with pytest.raises(ValueError, match="never the key itself"):
        load_keys(AuthConfig(mode="keys", keys_file=str(bad)))
    monkeypatch.setenv("GALENO_API_KEYS", f"dan:{hash_key('k')}:30")
    assert [(k.name, k.rate_per_minute) for k in load_keys(AuthConfig()).values()] == [("dan", 30.0)]
    monkeypatch.setenv("GALENO_API_KEYS", "dan:k")  # a key, not a hash, in the environment
    with pytest.raises(ValueError, match="never the key itself"):
        load_keys(AuthConfig())
