"""The HTTP side of `promptport serve`: FastAPI routes in OpenAI's shapes, tenants, limits, metrics.

    GET  /health                 liveness, the served model, how many prompts
    GET  /metrics                Prometheus text: requests, latencies, batch sizes, tokens
    GET  /v1/models              the caller's prompts, each addressed as a model id
    POST /v1/completions         OpenAI completions with the soft prompt prepended
    POST /v1/classify            class and class probabilities from the prompt's template/verbalizer
    POST /v1/prompts             register a prompt (multipart files or a tar archive), verified
    DELETE /v1/prompts/{id}      remove one of the caller's prompts

Every error is OpenAI's JSON error object (`error.message`, `error.param`) with a 4xx status; an
unexpected failure is a 500 of the same shape, never a dropped connection. A prompt of another
tenant answers exactly as a prompt that does not exist (404), so ids do not leak across tenants.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from promptport.errors import BadInput
from promptport.serve import ServeConfig
from promptport.serve.batching import MicroBatcher
from promptport.serve.engine import ClassifyRow, GenerateRow, ServeEngine
from promptport.serve.registry import PromptRegistry, Refused, ServedPrompt, files_from_tar

log = logging.getLogger("promptport.serve")
DEFAULT_TENANT = "default"


# ------------------------------------------------------------------------------------------ requests


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Input = str | dict[str, str]


class ClassifyRequest(_Strict):
    model: str
    input: Input | list[Input]


class CompletionRequest(_Strict):
    """OpenAI's completion fields; the ones this server cannot honour accept only their neutral value."""

    model: str
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream: Literal[False] = False
    echo: Literal[False] = False
    logprobs: None = None
    user: str | None = None
    apply_template: bool = Field(
        False, description="format each prompt string with the soft prompt's own template"
    )


# ------------------------------------------------------------------------------------------ pieces


def _error(status: int, message: str, param: str | None = None, code: str | None = None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _not_found(prompt_id: str) -> HTTPException:
    return HTTPException(404, f"The model '{prompt_id}' does not exist")


class Auth:
    """Bearer keys -> tenant, compared in constant time (sha256 digests, every key compared)."""

    def __init__(self, keys: dict[str, str] | None):
        self.keys = None
        if keys is not None:
            self.keys = [(hashlib.sha256(k.encode()).digest(), t) for k, t in keys.items()]

    def tenant(self, request: Request) -> str:
        if self.keys is None:
            return DEFAULT_TENANT
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing API key (Authorization: Bearer KEY)")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for key, tenant in self.keys:
            if hmac.compare_digest(digest, key):
                found = tenant
        if found is None:
            raise HTTPException(401, "invalid API key")
        return found


class BodyLimit:
    """ASGI middleware: a body over the limit (declared or streamed) is answered 413 unread."""

    def __init__(self, app, limits: ServeConfig):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = (
            self.limits.max_upload_bytes
            if scope["path"].startswith("/v1/prompts")
            else self.limits.max_body_bytes
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            resp = _error(413, f"request body over {limit} bytes", "body")
            return await resp(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body over {limit} bytes")
            return msg

        return await self.app(scope, counted, send)


class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests do not collide)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "promptport_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "promptport_request_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.batch = Histogram(
            "promptport_batch_rows",
            "Rows per forward pass",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.tokens = Counter("promptport_tokens", "Tokens", ["direction"], registry=r)
        self.in_flight = Gauge("promptport_in_flight", "Requests being answered", registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@dataclass
class ServerState:
    """What the routes share; one per app (`app.state.pp`)."""

    engine: ServeEngine
    registry: PromptRegistry
    batcher: MicroBatcher
    metrics: Metrics
    auth: Auth
    limits: ServeConfig
    active: dict[str, int]


def _state(request: Request) -> ServerState:
    return request.app.state.pp


State = Annotated[ServerState, Depends(_state)]


async def tenant_slot(request: Request):
    """The caller's tenant (401 without a valid key), holding one of its concurrency slots (429 when
    all are taken) until the response is sent."""
    st = _state(request)
    tenant = st.auth.tenant(request)
    limit = st.limits.max_concurrency
    if st.active[tenant] >= limit:
        raise HTTPException(429, f"more than {limit} concurrent requests for this key")
    st.active[tenant] += 1
    try:
        yield tenant
    finally:
        st.active[tenant] -= 1


Tenant = Annotated[str, Depends(tenant_slot)]


def create_app(
    engine: ServeEngine,
    registry: PromptRegistry,
    *,
    keys: dict[str, str] | None = None,
    limits: ServeConfig | None = None,
) -> FastAPI:
    """The server as an ASGI app (uvicorn runs it; tests may too). `keys`: API key -> tenant; None
    means one tenant, 'default', and no authentication (the caller binds to loopback)."""
    lim = (limits or ServeConfig()).checked()
    metrics = Metrics()
    batcher = MicroBatcher(
        {"classify": engine.classify, "generate": engine.generate},
        max_batch=lim.max_batch,
        max_wait_ms=lim.max_wait_ms,
        on_batch=lambda kind, n: metrics.batch.labels(kind).observe(n),
    )

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()  # uvicorn has drained the connections: finish what was queued

    app = FastAPI(title="promptport", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pp = ServerState(
        engine, registry, batcher, metrics, Auth(keys), lim, defaultdict(int)
    )
    app.add_middleware(BodyLimit, limits=lim)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        metrics.in_flight.inc()
        try:
            response = await call_next(request)
        finally:
            metrics.in_flight.dec()
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    _install_error_handlers(app)
    app.include_router(router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure answers OpenAI's error object; nothing answers with a dropped connection."""

    @app.exception_handler(Refused)
    async def refused(request, e: Refused):
        return _error(e.status, str(e), e.field)

    @app.exception_handler(BadInput)
    async def bad_input(request, e: BadInput):
        return _error(400, str(e), e.field)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        code = "model_not_found" if e.status_code == 404 else None
        param = "model" if e.status_code == 404 else None
        return _error(e.status_code, str(e.detail), param, code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or "body"
        return _error(400, f"{param}: {err.get('msg', 'invalid')}", param)

    @app.exception_handler(Exception)
    async def crashed(request, e: Exception):
        log.exception("request failed")
        return _error(500, f"internal error: {type(e).__name__}")


# ------------------------------------------------------------------------------------------ routes

router = APIRouter()


def _lookup(st: ServerState, tenant: str, prompt_id: str) -> ServedPrompt:
    p = st.registry.get(tenant, prompt_id)
    if p is None:
        raise _not_found(prompt_id)
    return p


@router.get("/health")
async def health(st: State):
    return {"status": "ok", "model": st.engine.lm.info.model_id, "prompts": len(st.registry)}


@router.get("/metrics")
async def prometheus(st: State):
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(st.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(tenant: Tenant, st: State):
    return {"object": "list", "data": [p.card() for p in st.registry.list(tenant)]}


@router.get("/v1/models/{prompt_id}")
async def model(prompt_id: str, tenant: Tenant, st: State):
    return _lookup(st, tenant, prompt_id).card()


@router.post("/v1/classify")
async def classify(req: ClassifyRequest, tenant: Tenant, st: State):
    p = _lookup(st, tenant, req.model)
    if p.kind != "classification":
        raise Refused("model", f"'{req.model}' is a generation prompt: use /v1/completions")
    inputs = req.input if isinstance(req.input, list) else [req.input]
    if not 1 <= len(inputs) <= st.limits.max_inputs:
        raise Refused("input", f"give 1 to {st.limits.max_inputs} inputs, got {len(inputs)}")
    ids = st.engine.classify_ids(p, inputs)
    probs = await st.batcher.submit("classify", [ClassifyRow(p, x) for x in ids])
    n_tok = sum(len(x) for x in ids)
    st.metrics.tokens.labels("input").inc(n_tok)
    classes = p.task.classes or []
    data = []
    for i, pr in enumerate(probs):
        k = int(pr.argmax())
        data.append(
            {
                "index": i,
                "label": classes[k],
                "label_index": k,
                "probs": {c: float(v) for c, v in zip(classes, pr.tolist())},
            }
        )
    return {
        "object": "list",
        "model": p.id,
        "data": data,
        "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok},
    }


@router.post("/v1/completions")
async def completions(req: CompletionRequest, tenant: Tenant, st: State):
    p = _lookup(st, tenant, req.model)
    lim = st.limits
    if req.max_tokens > lim.max_new_tokens:
        raise Refused("max_tokens", f"at most {lim.max_new_tokens} on this server")
    texts = req.prompt if isinstance(req.prompt, list) else [req.prompt]
    if not 1 <= len(texts) <= lim.max_inputs:
        raise Refused("prompt", f"give 1 to {lim.max_inputs} prompts, got {len(texts)}")
    stop = () if req.stop is None else (req.stop,) if isinstance(req.stop, str) else req.stop
    if len(stop) > 4:
        raise Refused("stop", "at most 4 stop sequences")
    if req.apply_template:
        fields = p.task.template_fields
        if len(fields) != 1:
            raise Refused("apply_template", f"the template needs the fields {fields}")
        texts = [p.task.format(**{fields[0]: t}) for t in texts]
    ids = [st.engine.completion_ids(t) for t in texts]
    rows = [GenerateRow(p, x, req.max_tokens, req.temperature, req.top_p, tuple(stop)) for x in ids]
    outs = await st.batcher.submit("generate", rows)
    n_in, n_out = sum(len(x) for x in ids), sum(o.n_tokens for o in outs)
    st.metrics.tokens.labels("input").inc(n_in)
    st.metrics.tokens.labels("output").inc(n_out)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": p.id,
        "choices": [
            {"text": o.text, "index": i, "logprobs": None, "finish_reason": o.finish_reason}
            for i, o in enumerate(outs)
        ],
        "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
    }


@router.post("/v1/prompts", status_code=201)
async def upload(request: Request, tenant: Tenant, st: State):
    files = await _uploaded_files(request, st.limits)
    prompt_id = files.pop("\0id", b"").decode("utf-8", "replace")
    if not prompt_id:
        raise Refused("id", "give the prompt an id (form field 'id')")
    return st.registry.register(tenant, prompt_id, files).card()


@router.delete("/v1/prompts/{prompt_id}")
async def delete(prompt_id: str, tenant: Tenant, st: State):
    if not st.registry.delete(tenant, prompt_id):
        raise _not_found(prompt_id)
    return {"id": prompt_id, "object": "model", "deleted": True}


async def _uploaded_files(request: Request, lim: ServeConfig) -> dict[str, bytes]:
    """{file name: bytes} from a multipart upload: the files themselves, or one tar 'archive'; the
    form field 'id' comes back under the key '\\0id' (no file can have that name)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise Refused("body", "send multipart/form-data: field 'id' and the prompt's files", 415)
    form = await request.form(max_files=8, max_fields=8, max_part_size=lim.max_upload_bytes)
    out: dict[str, bytes] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            if key != "id":
                raise Refused(key, "unknown form field (send 'id' and files)")
            out["\0id"] = value.encode()
            continue
        data: Any = await value.read()
        if key == "archive":
            out.update(files_from_tar(data, lim.max_upload_bytes))
        else:
            name = (value.filename or key).rsplit("/", 1)[-1]
            out[name] = data
    return out
