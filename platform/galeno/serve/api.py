"""The HTTP API of the ingress: request and response models (the OpenAPI schema at ``/docs``),
validation and limits, error bodies, and the try-it page.

Every error is JSON, ``{"error": code, "message": text}`` (plus ``detail`` for schema errors):

=====  =====================================================================================
 400   ``invalid_encoding``: the body is not UTF-8
 401   ``unauthorized``: no ``Authorization: Bearer <key>`` (with ``auth.mode=keys``; galeno.serve.auth)
 403   ``forbidden``: a key that is not valid
 404   ``not_served``: the application serves no model of that kind; ``not_found``: no route
 413   ``body_too_large``, ``text_too_long``, ``too_many_texts``: over ``limits.*``
 429   ``rate_limited``: the key is over its rate (``Retry-After``)
 422   ``invalid_request`` (not JSON, wrong types, unknown fields: ``detail`` lists them),
       ``empty_text``, ``invalid_text`` (lone surrogates), ``no_mask``, ``too_many_masks``,
       ``bad_top_k``, ``text_or_texts``
 503   ``overloaded`` (a model deployment's queue is full; ``Retry-After``), ``unavailable``,
       ``not_loaded``
 504   ``timeout``: no answer within ``request_timeout_s``
=====  =====================================================================================

Every response carries ``X-Galeno-Models`` (``fill-mask=galeno-mlm/3, ner=...``), and every
prediction names the model that computed it in its ``model`` field.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException


# --------------------------------------------------------------------------- schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FillMaskRequest(_Strict):
    text: StrictStr = Field(description="Text with exactly one <mask> (or the tokenizer's own mask token).",
                            examples=["A la exploración <mask> destaca abdomen blando y depresible."])
    top_k: StrictInt = Field(5, description="How many candidates (1..limits.max_top_k).")


class NERRequest(_Strict):
    text: Optional[StrictStr] = Field(None, description="One text; or give texts.",
                                      examples=["Se detectó sobreexpresión de la proteína p53 en la biopsia hepática."])
    texts: Optional[list[StrictStr]] = Field(None, description="Several texts, answered in order; or give text.")
    aggregation_strategy: Optional[Literal["simple", "first", "average", "max"]] = Field(
        None, description="How word labels and entity scores come from sub-token probabilities (docs/serve.md).")


class DeidentifyRequest(_Strict):
    text: Optional[StrictStr] = Field(None, description="One clinical note; or give texts.",
                                      examples=["Paciente de 45 años, NHC 1234567, ingresa el 14/03/2021. "
                                                "Teléfono de contacto 612 345 678."])
    texts: Optional[list[StrictStr]] = Field(None, description="Several notes, answered in order; or give text.")


class ModelRef(BaseModel):
    uri: str = Field(description="The URI or path the deployment was given.")
    name: Optional[str] = Field(None, description="Registered model name (null for a plain path).")
    version: Optional[str] = Field(None, description="Registered version the URI resolved to (null for a path).")


class Candidate(BaseModel):
    token: str = Field(description="The filler as it goes into the text (no leading space, no ##).")
    token_id: int
    token_str: str = Field(description="The tokenizer's decoding of the token (byte-level BPE keeps a leading space).")
    score: float = Field(description="Softmax probability at the mask.")
    sequence: str = Field(description="The input text with the mask replaced by the filler.")


class Span(BaseModel):
    start: int
    end: int


class FillMaskResponse(BaseModel):
    model: ModelRef
    mask: Span = Field(description="Where the mask was in the input.")
    candidates: list[Candidate]


class Entity(BaseModel):
    label: str
    text: str = Field(description="input[start:end], exactly.")
    start: int = Field(description="Offset of the first character, in code points of the input.")
    end: int = Field(description="Offset after the last character.")
    score: float = Field(description="Mean of the entity's word scores under the aggregation strategy.")


class NERResult(BaseModel):
    entities: list[Entity]


class NERResponse(BaseModel):
    model: ModelRef
    aggregation_strategy: str
    entities: Optional[list[Entity]] = Field(None, description="For a request with text.")
    results: Optional[list[NERResult]] = Field(None, description="For a request with texts, in their order.")


class ReplacedSpan(BaseModel):
    label: str = Field(description="MEDDOCAN type; the masked text holds [label] in its place.")
    start: int = Field(description="Offset in the input, in code points.")
    end: int
    text: str = Field(description="input[start:end]: the identifier (it is your own text coming back).")
    by: str = Field(description="model, or the name of the rule that found it.")


class DeidentifyResult(BaseModel):
    text: str = Field(description="The input with each identifier replaced by [LABEL].")
    spans: list[ReplacedSpan] = Field(description="What was replaced, in text order.")
    kept: list[ReplacedSpan] = Field(description="Found but kept (deid_keep_labels: the patient's sex).")


class DeidentifyResponse(BaseModel):
    model: ModelRef
    result: Optional[DeidentifyResult] = Field(None, description="For a request with text.")
    results: Optional[list[DeidentifyResult]] = Field(None, description="For a request with texts, in their order.")


class ErrorResponse(BaseModel):
    error: str = Field(description="A stable code: invalid_request, text_too_long, no_mask, overloaded, ...")
    message: str
    detail: Optional[list[dict[str, Any]]] = None


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 503, 504)}


def _error(status: int, code: str, message: str, headers: Optional[dict[str, str]] = None,
           detail: Optional[list] = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


# --------------------------------------------------------------------------- guard middleware
class _Guard:
    """Pure ASGI middleware: refuses oversized and non-UTF-8 bodies before FastAPI parses them, and
    adds ``X-Galeno-Models`` to every response."""

    def __init__(self, app, ingress) -> None:
        self.app, self.ingress = app, ingress
        self.max_bytes = int(ingress.settings["limits"]["max_body_bytes"])

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = (await self.ingress.models_header()).encode("latin-1")

        async def send_with_header(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-galeno-models", header)]}
            await send(message)

        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send_with_header)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _error(413, "body_too_large", f"the body has {int(declared)} bytes; the limit is "
                                f"{self.max_bytes}")(scope, receive, send_with_header)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _error(413, "body_too_large", f"the body has more than {self.max_bytes} bytes, "
                                    "the limit")(scope, receive, send_with_header)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            return await _error(400, "invalid_encoding", f"the body is not UTF-8 (invalid byte at offset "
                                f"{err.start})")(scope, receive, send_with_header)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send_with_header)


class Problem(Exception):
    """An answer other than 200, raised inside an endpoint: ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


# --------------------------------------------------------------------------- checks
def _check_text(text: str, limits: dict[str, int], where: str = "text") -> None:
    if not text.strip():
        raise Problem(422, "empty_text", f"{where} is empty")
    if len(text) > limits["max_chars"]:
        raise Problem(413, "text_too_long", f"{where} has {len(text)} characters; the limit is {limits['max_chars']}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise Problem(422, "invalid_text", f"{where} holds an unpaired surrogate at offset {err.start}") from None


def _schema_errors(err: RequestValidationError) -> list[dict[str, Any]]:
    # loc, msg and type only: pydantic's `input` would echo (possibly large) clinical text back
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in err.errors()]


# --------------------------------------------------------------------------- the app
def make_api(ingress) -> Any:
    """The FastAPI app of one ingress replica (``ingress``: the :class:`galeno.serve.app.Ingress`)."""
    from galeno.serve.page import render_page

    limits = ingress.settings["limits"]
    api = FastAPI(title="Galeno models", version="1",
                  description="Spanish biomedical-clinical fill-mask and NER (docs/serve.md).")

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        errors = _schema_errors(err)
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body") or "body"
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}", detail=errors)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "bad_request")
        return _error(err.status_code, code, str(err.detail), headers=getattr(err, "headers", None))

    @api.exception_handler(Problem)
    async def problem(request: Request, err: Problem):
        return _error(err.status, err.code, err.message, headers=err.headers)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request):
        return HTMLResponse(render_page(request.scope.get("root_path", "")))

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """The ingress answers; ``models`` is what it last heard the model deployments serve."""
        return {"status": "ok", "models": dict(ingress.models)}

    @api.get("/readyz", responses={503: {"description": "a served model is not loaded yet, or does not answer"}})
    async def readyz():
        """Ready when a replica of every served model answers with the model it has loaded (asked now).
        The probe for a load balancer or a Kubernetes readiness check; /healthz is the liveness probe."""
        info = await ingress.model_info(timeout=2.0)
        waiting = sorted(kind for kind, handle in ingress.handles.items()
                         if handle is not None and (info.get(kind) is None or "error" in info[kind]))
        body = {"status": "loading" if waiting else "ready", "waiting": waiting, "models": info}
        return JSONResponse(body, status_code=503 if waiting else 200)

    @api.get("/models")
    async def models() -> dict[str, Any]:
        """What each model deployment serves: URI, registry name and version, run id, path, labels."""
        return await ingress.model_info()

    @api.post("/fill-mask", response_model=FillMaskResponse, responses=_ERRORS)
    async def fill_mask(request: FillMaskRequest):
        """The top_k fillers of the one mask of ``text``."""
        _check_text(request.text, limits)
        if not 1 <= request.top_k <= limits["max_top_k"]:
            raise Problem(422, "bad_top_k", f"top_k must be between 1 and {limits['max_top_k']}")
        out = await ingress.call("fill-mask", (request.text, request.top_k))
        return JSONResponse({"model": out["model"], **out["result"]})

    def texts_of(request) -> list[str]:
        """``text`` or ``texts`` of a request, checked against the limits."""
        if (request.text is None) == (request.texts is None):
            raise Problem(422, "text_or_texts", "give exactly one of text and texts")
        texts = [request.text] if request.text is not None else list(request.texts or [])
        if not texts:
            raise Problem(422, "empty_text", "texts is empty")
        if len(texts) > limits["max_texts"]:
            raise Problem(413, "too_many_texts", f"{len(texts)} texts; the limit is {limits['max_texts']}")
        for i, text in enumerate(texts):
            _check_text(text, limits, "text" if request.text is not None else f"texts[{i}]")
        return texts

    @api.post("/ner", response_model=NERResponse, response_model_exclude_none=True, responses=_ERRORS)
    async def ner(request: NERRequest):
        """Entities of ``text``, or of each of ``texts`` in order, with offsets into the input."""
        texts = texts_of(request)
        strategy = request.aggregation_strategy or ingress.settings["aggregation_strategy"]
        out = await ingress.call("ner", (texts, strategy))
        body: dict[str, Any] = {"model": out["model"], "aggregation_strategy": strategy}
        if request.text is not None:
            body["entities"] = out["result"][0]
        else:
            body["results"] = [{"entities": e} for e in out["result"]]
        return JSONResponse(body)

    @api.post("/deidentify", response_model=DeidentifyResponse, response_model_exclude_none=True, responses=_ERRORS)
    async def deidentify(request: DeidentifyRequest):
        """``text`` (or each of ``texts``) with every identifier the model or the rules find replaced by
        ``[LABEL]``, and the replaced spans with offsets into the input. Nothing is stored or logged."""
        texts = texts_of(request)
        out = await ingress.call("deidentify", texts)
        body: dict[str, Any] = {"model": out["model"]}
        if request.text is not None:
            body["result"] = out["result"][0]
        else:
            body["results"] = out["result"]
        return JSONResponse(body)

    api.add_middleware(_Guard, ingress=ingress)
    auth = ingress.settings.get("auth", {"mode": "none"})
    if auth["mode"] == "keys":  # added last: the outermost layer, so no body is read for a caller without a key
        from galeno.serve.auth import Auth

        api.add_middleware(Auth, settings=auth, error=_error)
    return api
