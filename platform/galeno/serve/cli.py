"""Command line of ``jobs/serve.py``: start (or join) Ray, run the Serve application, print its URL.

With ``--once`` it sends one fill-mask and one NER request to the running application, prints
the answers and exits: a quick check that the models load and answer, and the demo's last step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from galeno.config import ConfigError, merge, help_text, load, load_yaml
from galeno.serve.config import ServeConfig, preset_overlay

USAGE = """Serve fill-mask and NER models over HTTP with Ray Serve (one FastAPI ingress, dynamic batching).

examples:
  python jobs/serve.py --fill-mask-model models:/galeno-mlm@champion --ner-model models:/galeno-ner-pharmaconer@champion
  python jobs/serve.py --config configs/serve/local.yaml --once        # one request to each model, then exit
  python jobs/serve.py --fill-mask-model artifacts/pretrain/tiny-cpu/model fill_mask.max_replicas=2
  python jobs/serve.py --deid-model models:/galeno-ner-meddocan-deid@champion host=0.0.0.0 \
      auth.mode=keys auth.keys_file=~/.config/galeno/api-keys       # keys: python jobs/api_keys.py add NAME
  serve run configs/serve/local.yaml                                   # the same application with Ray's CLI
A moved registry alias: run again with reload=N (replicas replaced, rolling), or bump user_config.reload
under the file's deployments and `serve deploy` it (replicas reload in place); docs/serve.md.
"""


def parse(argv: Sequence[str] | None = None) -> tuple[ServeConfig, bool]:
    parser = argparse.ArgumentParser(prog="serve.py", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config fields (override any with key.path=value):\n" + help_text(ServeConfig))
    parser.add_argument("--config", metavar="FILE", action="append",
                        help="a preset, or a Serve config file naming galeno.serve.app:app_builder (repeatable)")
    parser.add_argument("--fill-mask-model", metavar="URI", help="masked LM: models:/NAME@alias, models:/NAME/N or a folder")
    parser.add_argument("--ner-model", metavar="URI", help="token-classification model, same forms")
    parser.add_argument("--deid-model", metavar="URI", help="de-identification model for /deidentify, same forms")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000)")
    parser.add_argument("--once", action="store_true", help="send one request to each model, print the answers, exit")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="dotted overrides applied last")
    args = parser.parse_args(argv)
    extra: dict[str, Any] = {}
    try:
        for path in args.config or ():
            merge(extra, preset_overlay(load_yaml(path)))
        for key, value in (("fill_mask_model", args.fill_mask_model), ("ner_model", args.ner_model),
                           ("deid_model", args.deid_model), ("port", args.port)):
            if value is not None:
                extra[key] = value
        cfg = load(ServeConfig, None, args.overrides, extra=extra)
    except (ConfigError, ValueError, OSError) as err:
        parser.error(str(err))
    if not cfg.fill_mask_model and not cfg.ner_model and not cfg.deid_model:
        parser.error("nothing to serve: give --fill-mask-model, --ner-model and/or --deid-model (or a --config that "
                     "names them)")
    return cfg, args.once


def check_models(cfg: ServeConfig) -> None:
    """Ask the registry where every ``models:/`` URI points, once, on the driver, before any replica starts.

    This creates the embedded SQLite store once: two replicas creating it at the same time race in its
    schema migrations. It also turns a model that is not there into one line that says what to run,
    within seconds, not a replica's traceback a minute later. Raises ``SystemExit``.
    """
    from galeno.inference.source import registry_version, split_models_uri
    from galeno.tracking import tracking_uri

    for kind, uri in (("fill-mask", cfg.fill_mask_model), ("NER", cfg.ner_model), ("de-identification", cfg.deid_model)):
        if not uri.startswith("models:/"):
            continue
        try:
            registry_version(uri, tracking_uri(cfg.tracking))
        except Exception as err:  # noqa: BLE001 - MLflow's not-found, no versions, or an unreachable store
            name, reference, how = split_models_uri(uri)
            detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            hint = (f"python jobs/promote.py --model {name} --version N" if how == "alias"
                    else "a job that registers it (jobs/pretrain.py, jobs/finetune_ner.py)")
            raise SystemExit(f"serve.py: the {kind} model {uri} cannot be served: {detail}. Run `make demo` to "
                             f"build and register the demo models, or register one and point to it with {hint}.")


def start(cfg: ServeConfig) -> str:
    """Start Serve and the application of ``cfg`` on this Ray; returns its URL once it is running."""
    from ray import serve

    from galeno.runtime import init_ray
    from galeno.serve.app import build_app

    init_ray(cfg.ray)
    serve.start(http_options={"host": cfg.host, "port": cfg.port,
                              "request_timeout_s": cfg.request_timeout_s + 5})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def request(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, Any]:
    """POST ``body`` as JSON (GET without one); the status and the decoded JSON answer. With
    ``$GALENO_API_KEY`` set, it is sent as the bearer key."""
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json"} if data else {}
    if os.environ.get("GALENO_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['GALENO_API_KEY'].strip()}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def once(cfg: ServeConfig, url: str) -> int:
    """One request per served model; prints every answer; 0 if all were 200."""
    from galeno.serve.page import DEID_EXAMPLE, FILL_MASK_EXAMPLE, NER_EXAMPLE

    calls = [("GET /models", f"{url}/models", None)]
    if cfg.fill_mask_model:
        calls.append(("POST /fill-mask", f"{url}/fill-mask", {"text": FILL_MASK_EXAMPLE, "top_k": 5}))
    if cfg.ner_model:
        calls.append(("POST /ner", f"{url}/ner", {"text": NER_EXAMPLE}))
    if cfg.deid_model:
        calls.append(("POST /deidentify", f"{url}/deidentify", {"text": DEID_EXAMPLE}))
    failed = 0
    for name, where, body in calls:
        status, answer = request(where, body)
        failed += status != 200
        print(f"{name} -> {status}")
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    from ray import serve

    from galeno.runtime import setup_logging

    setup_logging()
    cfg, just_once = parse(argv)
    check_models(cfg)
    url = start(cfg)
    print(f"Galeno models at {url}/  (API docs: {url}/docs)", flush=True)
    if just_once:
        code = once(cfg, url)
        stop(cfg)
        return code
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down Serve", file=sys.stderr)
        stop(cfg)
    return 0


def stop(cfg: ServeConfig) -> None:
    """Take our application down, and Ray with it when this job started Ray.

    Not ``serve.shutdown()``: on a cluster it would also stop the other applications of the Serve
    instance, and it kills the Serve controller while its graceful shutdown is still queued, which
    Ray reports as a failed task ("ServeController.graceful_shutdown failed ... killed by ray.kill").
    """
    import ray
    from ray import serve

    serve.delete(cfg.app_name)
    if ray.is_initialized() and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        ray.shutdown()
