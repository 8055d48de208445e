"""The Ray Serve application: ``FillMask`` and ``NER`` model deployments behind one FastAPI ingress.

::

    HTTP proxy ──> Ingress (FastAPI: /, /healthz, /readyz, /models, /fill-mask, /ner, /deidentify;
                   │            API keys and rate limits: galeno.serve.auth)
                      ├── FillMask    @serve.batch, reconfigure(user_config) reloads the model
                      ├── NER         @serve.batch, reconfigure(user_config) reloads the model
                      └── Deidentify  @serve.batch, the de-identification model and the rules

The ingress validates every request (types, sizes, UTF-8) and answers 4xx JSON itself, so a
model replica only sees well-formed work; it awaits the model deployments through their
handles with a timeout (504) and turns their backpressure into 503. Model replicas batch
requests dynamically (``@serve.batch``), sort each batch by length and run the forward pass
in a worker thread, so the replica keeps accepting requests (and forming the next batch)
meanwhile.

Reloading a model: a model replica's ``user_config`` is ``{"reload": ...}`` (it may also name
``model``, ``max_length``, ``stride``, over what the deployment was built with). When it changes
and nothing else does — a Serve config file's ``deployments: [{name: NER, user_config: {reload:
"2"}}]`` deployed again — Serve calls :meth:`_ModelDeployment.reconfigure` on the running
replicas, which resolve the URI again: a registry alias that moved loads its new version with no
restart. A new ``serve.run`` (our job) or new application ``args`` change the application's code
version instead, and Serve replaces the replicas (a rolling update); the new ones resolve too.
Without either, a replica serving an alias (or ``latest``) asks the registry every
``follow_alias_s`` where it points, and loads and swaps in a version the alias moved to.

The FastAPI app is built per replica by ``__serve_build_asgi_app__`` (Serve's late-bound
``@serve.ingress()``), not at import: its body-size guard, error handlers and model headers
need the replica's config and handles. Request bodies are never logged.

:func:`build_app` makes the application from a :class:`~galeno.serve.config.ServeConfig`;
:func:`app_builder` is the same for ``serve run`` / ``serve deploy`` config files.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from typing import Any, Optional
from urllib.parse import quote

from ray import serve

from galeno.inference.fill_mask import InputError, fill_mask_batch
from galeno.inference.loading import load_fill_mask, load_ner, public_info
from galeno.inference.source import follows, registry_version, resolve_source
from galeno.inference.token_classification import AGGREGATIONS, predict_entities
from galeno.serve.api import Problem, make_api
from galeno.serve.config import ServeConfig

log = logging.getLogger("ray.serve")

# --------------------------------------------------------------------------- model deployments


class _ModelDeployment:
    """A model replica: loads on reconfigure, batches predictions, reports what it serves."""

    kind = ""

    def __init__(self, model: dict[str, Any], batch: dict[str, Any], torch_threads: int = 0,
                 want_gpu: bool = False) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.chunk = int(batch["forward_batch_size"])
        self.overhead_tokens = int(batch["forward_overhead_tokens"])
        self.want_gpu = want_gpu
        self.predict.set_max_batch_size(int(batch["max_batch_size"]))
        self.predict.set_batch_wait_timeout_s(float(batch["batch_wait_timeout_s"]))
        self.base = dict(model)
        self.loaded = None
        self.settings: dict[str, Any] = {}
        self.user_config: dict[str, Any] = {}
        self._lock = threading.Lock()  # Serve's reconfigure and the alias follower never load at once
        self._follower: Optional[threading.Thread] = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """(Re)load the model: ``user_config`` (``reload``, and optionally ``model``, ``max_length``,
        ``stride``, ``follow_alias_s``) over the settings the deployment was built with. The URI is
        resolved again, so a moved alias loads its new version; an alias that still points at the
        loaded version, with the same settings, loads nothing. Serve calls this at start and whenever
        user_config changes; with ``follow_alias_s`` a thread also checks the alias that often."""
        with self._lock:
            self.user_config = dict(user_config or {})
            self._load_current()
        merged = {**self.base, **self.user_config}
        if float(merged.get("follow_alias_s") or 0) > 0 and self._follower is None:
            self._follower = threading.Thread(target=self._follow, name=f"{self.kind}-follow-alias", daemon=True)
            self._follower.start()

    def _follow(self) -> None:
        """Every ``follow_alias_s``: one registry call; a moved alias loads its version (in this thread,
        while the replica keeps answering from the loaded one) and is swapped in. A registry that cannot
        be reached is logged and asked again next time; the loaded model stays."""
        while True:
            merged = {**self.base, **self.user_config}
            every = float(merged.get("follow_alias_s") or 0)
            if every <= 0:
                self._follower = None
                return
            time.sleep(every)
            if not follows(merged["model"]):
                continue  # a user_config named a folder or a pinned version instead
            try:
                loaded = self.loaded.source if self.loaded else None
                now = registry_version(merged["model"], merged.get("tracking_uri", ""))
                if loaded is None or (loaded.name, loaded.version) != now:
                    with self._lock:
                        self._load_current()
            except Exception as err:  # noqa: BLE001
                log.warning("%s: following %s failed (%s); still serving the loaded version", self.kind,
                            merged["model"], type(err).__name__)

    def _load_current(self) -> None:
        """Resolve the model URI now and load it unless it is what is loaded already (holding the lock)."""
        merged = {**self.base, **self.user_config}
        source = resolve_source(merged["model"], merged.get("tracking_uri", ""), merged.get("cache", ""))
        settings = {k: v for k, v in merged.items() if k != "reload"}
        current = self.loaded.source if self.loaded else None
        if (current is not None and settings == self.settings and source.version is not None
                and (current.name, current.version) == (source.name, source.version)):
            return
        # built aside and swapped in one assignment: batches running now finish on the old model
        self.loaded = self._load(source, int(merged.get("max_length", 512)), str(merged.get("quantize") or ""),
                                 str(merged.get("dtype") or ""), str(merged.get("runtime") or "torch"))
        self.settings = settings
        log.info("%s replica loaded %s (%s)", self.kind, source.uri,
                 f"{source.name} version {source.version}" if source.version else source.path)

    def _load(self, source, max_length: int, quantize: str, dtype: str, runtime: str):
        raise NotImplementedError

    def _run(self, loaded, items: list) -> list:
        raise NotImplementedError

    async def info(self) -> Optional[dict[str, Any]]:
        info = public_info(self.loaded)
        if info is not None:
            info["replica"] = serve.get_replica_context().replica_id.unique_id
        return info

    async def _batch(self, items: list) -> list[dict[str, Any]]:
        """Results of one batch as ``{"result", "model"}`` or ``{"error", "message", "status"}`` per item.

        A batch that fails is run again item by item, so one bad input fails only its own request.
        """
        loaded = self.loaded
        if loaded is None:
            return [{"error": "not_loaded", "message": "the model is not loaded yet", "status": 503}] * len(items)
        try:
            results = await asyncio.to_thread(self._run, loaded, items)
        except Exception as err:  # noqa: BLE001
            _log_failure(self.kind, len(items), err)
            results = []
            for item in items:
                try:
                    results += await asyncio.to_thread(self._run, loaded, [item])
                except Exception as one:  # noqa: BLE001
                    _log_failure(self.kind, 1, one)
                    results.append(one)
        model = loaded.source.brief()
        out = []
        for r in results:
            if isinstance(r, InputError):
                out.append({"error": r.code, "message": str(r), "status": r.status, "model": model})
            elif isinstance(r, Exception):
                out.append({"error": "internal_error", "message": f"the model failed on this input "
                            f"({type(r).__name__})", "status": 500, "model": model})
            else:
                out.append({"result": r, "model": model})
        return out


def _log_failure(kind: str, n: int, err: BaseException) -> None:
    # The exception type and where it was raised, never its message: it might quote the text.
    where = "".join(traceback.format_tb(err.__traceback__)[-3:])
    log.error("%s: a batch of %d failed with %s at\n%s", kind, n, type(err).__name__, where)


@serve.deployment(name="FillMask")
class FillMask(_ModelDeployment):
    """The masked LM: ``predict((text, top_k))`` → ``{"result": {mask, candidates}, "model"}`` or an error."""

    kind = "fill-mask"

    def _load(self, source, max_length, quantize, dtype, runtime):
        return load_fill_mask(source, max_length, self.want_gpu, quantize, dtype, runtime)

    def _run(self, loaded, items):
        return fill_mask_batch(loaded, items, self.chunk, self.overhead_tokens)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, items: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return await self._batch(items)


class _TokenClassifier(_ModelDeployment):
    """A deployment that serves a token-classification model (NER, Deidentify)."""

    def _load(self, source, max_length, quantize, dtype, runtime):
        return load_ner(source, max_length, self.want_gpu, quantize, dtype, runtime)


@serve.deployment(name="NER")
class NER(_TokenClassifier):
    """The token classifier: ``predict((texts, strategy))`` → ``{"result": [entities per text], "model"}``."""

    kind = "ner"

    def _run(self, loaded, items):
        return predict_entities(loaded, items, stride=int(self.settings.get("stride", 32)), chunk=self.chunk,
                         overhead_tokens=self.overhead_tokens)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, items: list[tuple[list[str], str]]) -> list[dict[str, Any]]:
        return await self._batch(items)


@serve.deployment(name="Deidentify")
class Deidentify(_TokenClassifier):
    """De-identification: ``predict(texts)`` → ``{"result": [{text, spans, kept} per text], "model"}``;
    the model's entities and the rules' spans united, each replaced by ``[LABEL]`` (galeno.deid)."""

    kind = "deidentify"

    def _run(self, loaded, items):
        from galeno.deid.deidentify import DeidConfig, Deidentifier

        cfg = DeidConfig(model=loaded.source.uri, stride=int(self.settings.get("stride", 32)),
                         keep_labels=list(self.settings.get("keep_labels", [])), forward_batch_size=self.chunk,
                         batch_size=max(1, sum(len(texts) for texts in items)))
        flat = Deidentifier(cfg, loaded=loaded)([t for texts in items for t in texts], with_text=True)
        out, k = [], 0
        for texts in items:
            out.append([{"text": r.text, "spans": [_span(s) for s in r.spans], "kept": [_span(s) for s in r.kept]}
                        for r in flat[k:k + len(texts)]])
            k += len(texts)
        return out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, items: list[list[str]]) -> list[dict[str, Any]]:
        return await self._batch(items)


def _span(s) -> dict[str, Any]:
    return {"label": s.label, "start": s.start, "end": s.end, "text": s.text, "by": s.rule}


# --------------------------------------------------------------------------- ingress


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """Routes, validation, limits, timeouts; holds the handles of the model deployments."""

    def __init__(self, fill_mask, ner, settings: dict[str, Any], deidentify=None) -> None:
        self.handles = {"fill-mask": fill_mask, "ner": ner}
        if deidentify is not None:  # reported (/models, /readyz, the header) only where served
            self.handles["deidentify"] = deidentify
        self.settings = settings
        self.models: dict[str, Optional[dict[str, Any]]] = {}
        self.models_at = 0.0
        self._refreshing: Optional[asyncio.Task] = None

    def __serve_build_asgi_app__(self):
        return make_api(self)

    # -- calls into the model deployments
    async def call(self, kind: str, item: Any) -> dict[str, Any]:
        """The model's result for ``item``; raises :class:`Problem` for every answer but success."""
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        handle = self.handles.get(kind)
        if handle is None:
            raise Problem(404, "not_served", f"no {kind} model is served by this application")
        response = handle.predict.remote(item)
        timeout = float(self.settings["request_timeout_s"])
        try:
            out = await asyncio.wait_for(_awaited(response), timeout)
        except asyncio.TimeoutError:
            response.cancel()
            raise Problem(504, "timeout", f"the {kind} model did not answer within {timeout:g} s") from None
        except BackPressureError as err:
            retry = getattr(err, "retry_after_s", None)
            raise Problem(503, "overloaded", f"the {kind} model is overloaded: too many requests are queued; "
                           "retry later", {"Retry-After": str(max(1, round(retry or 1)))}) from None
        except DeploymentUnavailableError:
            raise Problem(503, "unavailable", f"the {kind} deployment is not available") from None
        if "model" in out:
            self._remember(kind, out["model"])
        if "error" in out:
            raise Problem(out["status"], out["error"], out["message"])
        return out

    async def model_info(self, timeout: float = 5.0) -> dict[str, Optional[dict[str, Any]]]:
        """What each model deployment serves (asked of one replica of each)."""
        async def ask(kind: str):
            handle = self.handles[kind]
            if handle is None:
                return None
            return await asyncio.wait_for(_awaited(handle.info.remote()), timeout)

        kinds = list(self.handles)
        answers = await asyncio.gather(*(ask(k) for k in kinds), return_exceptions=True)
        out: dict[str, Optional[dict[str, Any]]] = {}
        for kind, answer in zip(kinds, answers):
            if isinstance(answer, BaseException):
                out[kind] = {"error": f"no answer ({type(answer).__name__})"}
            else:
                out[kind] = answer
                self._remember(kind, answer)
        self.models_at = time.monotonic()
        return out

    def _remember(self, kind: str, info: Optional[dict[str, Any]]) -> None:
        self.models[kind] = None if info is None else {k: info.get(k) for k in ("uri", "name", "version")}

    async def models_header(self) -> str:
        """``X-Galeno-Models``: ``fill-mask=galeno-mlm/3, ner=galeno-ner-pharmaconer/7`` (a path for a folder)."""
        if not self.models:
            try:
                await self.model_info(timeout=2.0)
            except Exception:  # noqa: BLE001 - the header is informative only
                pass
        elif time.monotonic() - self.models_at > 30 and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.ensure_future(self.model_info())
        parts = []
        for kind in self.handles:
            info = self.models.get(kind)
            if self.handles[kind] is None:
                parts.append(f"{kind}=none")
            elif info:
                label = f"{info['name']}/{info['version']}" if info.get("version") else info.get("uri")
                parts.append(f"{kind}={label}")
        return quote(", ".join(parts), safe="/:@=,. _-")


async def _awaited(response):
    return await response


# --------------------------------------------------------------------------- building


def _model_settings(cfg: ServeConfig, uri: str) -> dict[str, Any]:
    """What a model replica loads (its constructor's ``model``; user_config may override any of it).

    The tracking URI goes in only when it names no secret: set in the config (the operator put it
    there) or the embedded SQLite store, resolved here because replicas may start elsewhere. A
    server named by ``$MLFLOW_TRACKING_URI`` reaches replicas through their runtime environment.
    """
    import os

    from galeno import paths
    from galeno.tracking import tracking_uri

    out: dict[str, Any] = {"model": uri, "max_length": cfg.max_length, "stride": cfg.stride}
    if follows(uri) and cfg.follow_alias_s > 0:
        out["follow_alias_s"] = cfg.follow_alias_s
    if uri.startswith("models:/"):
        if cfg.tracking.tracking_uri or not os.environ.get("MLFLOW_TRACKING_URI"):
            out["tracking_uri"] = tracking_uri(cfg.tracking)
        out["cache"] = cfg.model_cache or str((paths.mlflow_home() / "models").resolve())
    elif uri:
        from pathlib import Path

        from galeno import handover

        # a pretraining or NER output folder serves the model its record names
        out["model"] = str(Path(handover.model_folder(uri)).resolve())
    return out


def build_app(cfg: ServeConfig):
    """The Serve application of ``cfg`` (pass it to ``serve.run``)."""
    from galeno.serve.auth import settings as auth_settings

    if not cfg.fill_mask_model and not cfg.ner_model and not cfg.deid_model:
        raise ValueError("nothing to serve: set fill_mask_model, ner_model and/or deid_model")
    want_gpu = {"fill_mask": cfg.fill_mask.num_gpus > 0, "ner": cfg.ner.num_gpus > 0, "deid": cfg.deid.num_gpus > 0}
    handles = {}
    for key, deployment, uri in (("fill_mask", FillMask, cfg.fill_mask_model), ("ner", NER, cfg.ner_model),
                                 ("deid", Deidentify, cfg.deid_model)):
        if not uri:
            handles[key] = None
            continue
        group = getattr(cfg, key)
        batch = {"max_batch_size": group.batch.max_batch_size, "batch_wait_timeout_s": group.batch.batch_wait_timeout_s,
                 "forward_batch_size": group.batch.forward_batch_size,
                 "forward_overhead_tokens": group.batch.forward_overhead_tokens}
        # user_config is never empty (Serve calls reconfigure, which loads the model, only when it is set);
        # a Serve config file's `deployments: [{name: NER, user_config: {reload: "2"}}]` reloads in place
        settings = _model_settings(cfg, uri)
        settings.update({k: v for k, v in (("quantize", group.quantize), ("dtype", group.dtype)) if v})
        if key == "deid":
            settings["keep_labels"] = list(cfg.deid_keep_labels)
        if group.runtime != "torch":
            settings["runtime"] = group.runtime
        handles[key] = deployment.options(user_config={"reload": cfg.reload}, **group.options()).bind(
            settings, batch, cfg.torch_threads, want_gpu[key])
    settings = {"request_timeout_s": cfg.request_timeout_s, "aggregation_strategy": cfg.aggregation_strategy,
                "aggregations": list(AGGREGATIONS),
                "limits": {"max_chars": cfg.limits.max_chars, "max_texts": cfg.limits.max_texts,
                           "max_top_k": cfg.limits.max_top_k, "max_body_bytes": cfg.limits.max_body_bytes},
                "auth": auth_settings(cfg.auth)}  # key hashes only, read here (driver or Serve's builder)
    return Ingress.options(**cfg.ingress.options()).bind(handles["fill_mask"], handles["ner"], settings,
                                                         handles["deid"])


def app_builder(args: dict[str, Any]):
    """Builder for ``serve run`` / ``serve deploy``: ``args`` is a ServeConfig overlay (nested
    mappings, or dotted keys as ``serve run ... ner.max_replicas=2`` passes them)."""
    from galeno.config import apply_override, load

    nested: dict[str, Any] = {}
    for key, value in dict(args or {}).items():
        apply_override(nested, key, value)  # strings from the command line are coerced to the field types
    return build_app(load(ServeConfig, None, extra=nested))
