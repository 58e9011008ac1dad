"""Ray Serve: a generator checkpoint behind a FastAPI HTTP endpoint, with dynamic batching.

    raygan serve --checkpoint tunes/a/best --port 8000            # blocks; Ctrl-C shuts Serve down
    raygan serve --checkpoint tunes/a/best --proxy python         # Serve's Python proxy, not HAProxy
    serve run raygan.serve.app:app_builder checkpoint=/abs/path/to/best   # Serve's own CLI
    serve deploy cluster/serve.yaml                                   # a running cluster

POST /generate {n, max_tokens, temperature, top_k, top_p, prefix, seed}
    -> {samples, tokens, lengths, seed, unknown_words, batch_requests,
        model: {checkpoint, step, metric}}
GET /healthz, GET /metadata (config, vocab size, limits, the checkpoint's metrics).

What a dying replica or an overload costs (BENCHMARKS.md, serving):
- Behind HAProxy (the default ingress, raygan.run.ray_env) a request that lacks a seed gets one
  in the x-raygan-seed header before it is routed, and a request whose replica died before
  answering is sent again to another replica (ray_env.RETRY_ON): the retry returns what the
  first try would have, and the client sees no error. Serve's Python proxy does not retry a
  request whose replica died mid-flight: there the client gets a 500 and may resend.
- A replica holds max_ongoing_requests and queues `max_queued_requests` more; past that a
  request is answered at once with 503 and `Retry-After`. Behind HAProxy the limits are
  HAProxy's (`run_app`, ray_env.limit_ingress): it opens at most max_ongoing_requests
  connections to a replica and queues the rest itself, so an overloaded replica does not
  collect unread requests in its socket backlog, where Serve's own queue limit cannot see them.
- A body over MAX_BODY_BYTES is refused with 413 before it is parsed.

The only module that calls ray.serve; the sampling itself is raygan.serve.sampling, shared with
`raygan sample`. Concurrent requests are collected by `@serve.batch` and sampled together, each
from its own seeded random stream, so a request's tokens do not depend on its batch. The
checkpoint lives in the deployment's user_config. Deploying a new one (`start_server` again, or
a config with new `args`) replaces the replicas one at a time: a new replica is up before an old
one stops, and the old one finishes its requests (max_surge_percent, graceful shutdown). A
config that changes only the deployment's `user_config` swaps the model inside the running
replicas (`reconfigure`). Either way no request fails.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and
# under Serve's ingress wrapper string annotations are not resolved (the body became a query).
import logging
import math
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from raygan.core.errors import RayganError
from raygan.core.malloc import keep_freed_memory
from raygan.run.ray_env import SEED_HEADER
from raygan.serve.sampling import (
    MAX_TEMPERATURE,
    SEED_LIMIT,
    SampleRequest,
    SampleResult,
    ServedModel,
    draw_seed,
    encode_prefix,
    load_model,
    sample_batch,
)

APP_NAME = "raygan"
MAX_N = 64  # rows per request
MAX_PREFIX_CHARS = 4096
MAX_BATCH_SIZE = 32  # requests per batched pass; 32 concurrent clients fill one
BATCH_WAIT_S = 0.005  # how long a batch waits to fill: small next to a pass (17-50 ms here)
MAX_ONGOING_FLOOR = 64  # per replica: a full batch computing plus the next one queueing
MAX_QUEUED = MAX_BATCH_SIZE  # per replica (per proxy on the Python path), past the ongoing ones
RETRY_AFTER_S = 1  # what a 503 for a full queue tells the client: a few batches' time
MAX_BODY_BYTES = 64 * 1024  # the largest valid body (a 4,096-character prefix, \u-escaped) fits
AUTOSCALING = {  # replicas=None: scale on queued requests
    "min_replicas": 1,
    "max_replicas": 2,  # the project's 2-CPU machine; raise on a cluster
    "upscale_delay_s": 10.0,
    "downscale_delay_s": 300.0,
}


# -- HTTP schema ----------------------------------------------------------------------------------
class GenerateRequest(BaseModel):
    """Body of POST /generate; every limit violated is a 422 naming the field."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1, le=MAX_N, description="samples to draw")
    max_tokens: int | None = Field(
        None, ge=1, description="tokens per sample, prefix included; default and maximum: "
        "the model's max length",
    )  # fmt: skip
    temperature: float = Field(1.0, gt=0, le=MAX_TEMPERATURE, description="softmax temperature")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 keeps all")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1 keeps all")
    prefix: str = Field(
        "", max_length=MAX_PREFIX_CHARS, description="text every sample starts with"
    )
    seed: int | None = Field(
        None, ge=0, lt=SEED_LIMIT, description="same seed and settings, same samples; "
        "drawn (and returned) when absent",
    )  # fmt: skip


class ModelInfo(BaseModel):
    checkpoint: str
    step: int | None
    metric: dict[str, Any]


class GenerateResponse(BaseModel):
    samples: list[str]
    tokens: list[list[int]] = Field(description="n rows of max_tokens ids (PAD after EOS)")
    lengths: list[int] = Field(description="ids of each row up to and including EOS")
    seed: int
    unknown_words: list[str] = Field(description="prefix words mapped to the unknown token")
    batch_requests: int = Field(description="requests sampled in the same batched pass")
    model: ModelInfo


def _invalid(field: str, message: str, value: Any) -> RequestValidationError:
    """The 422 FastAPI gives a failed field check, for checks that need the model."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": value}]
    )


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: metrics that hold one are reported as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_sample_request(
    model: ServedModel, body: GenerateRequest, routed_seed: int | None = None
) -> tuple[SampleRequest, list[str]]:
    """Validate the fields that depend on the model and build the sampling request. Without
    a seed in the body the request uses `routed_seed` (drawn by the ingress) or a fresh one."""
    max_tokens = model.max_len if body.max_tokens is None else body.max_tokens
    if max_tokens > model.max_len:
        raise _invalid(
            "max_tokens", f"must be <= the model's max length {model.max_len}", body.max_tokens
        )
    try:
        ids, unknown = encode_prefix(model, body.prefix, max_tokens)
    except RayganError as exc:
        raise _invalid("prefix", str(exc), body.prefix) from None
    request = SampleRequest(
        num=body.n, max_tokens=max_tokens,
        seed=body.seed if body.seed is not None else
        routed_seed if routed_seed is not None else draw_seed(),
        temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, prefix_ids=tuple(ids),
    )  # fmt: skip
    return request, unknown


def _sample_by_model(
    models: list[ServedModel], requests: list[SampleRequest]
) -> list[SampleResult]:
    """A batch may straddle a model swap: each request runs on the model that validated it."""
    results: list[SampleResult | None] = [None] * len(requests)
    for model in {id(m): m for m in models}.values():
        members = [i for i, m in enumerate(models) if m is model]
        for i, result in zip(
            members, sample_batch(model, [requests[i] for i in members]), strict=True
        ):
            results[i] = result
    return results  # type: ignore[return-value]


# -- the deployment ---------------------------------------------------------------------------------
# max_body_size: a longer body is a 413 before it is parsed, by its Content-Length or as it streams
api = FastAPI(
    title="raygan",
    description="Samples from an adversarially trained LSTM generator.",
    max_body_size=MAX_BODY_BYTES,
)


@api.exception_handler(RequestValidationError)
async def _validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, except that an input JSON cannot carry (Python's json reads `Infinity`
    and `NaN`) is reported as null instead of failing the response with a 500."""
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(exc.errors()))})


# [1] a Serve deployment whose HTTP ingress is the FastAPI app above
@serve.deployment(
    max_ongoing_requests=MAX_ONGOING_FLOOR,
    max_queued_requests=MAX_QUEUED,
    backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S},
    ray_actor_options={"num_cpus": 1},
    max_surge_percent=1,  # a swap starts one new replica before it stops an old one
    graceful_shutdown_wait_loop_s=0.5,  # a stopping replica checks this often for drained requests
    graceful_shutdown_timeout_s=30,  # ... and is killed after this long however many are left
)
@serve.ingress(api)
class GeneratorServer:
    """One replica: the model named by user_config["checkpoint"], batched sampling."""

    def __init__(self, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)  # one replica per CPU: no oversubscription
        keep_freed_memory()  # every batch samples (rows, V) logits: see raygan.core.malloc
        self.model: ServedModel | None = None
        self.checkpoint: str | None = None  # user_config["checkpoint"] of the loaded model
        self.batching = {"max_batch_size": MAX_BATCH_SIZE, "batch_wait_timeout_s": BATCH_WAIT_S}

    # [2] called with user_config at start and on every change of it (a new checkpoint)
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        checkpoint = str(user_config["checkpoint"])
        if checkpoint != self.checkpoint:  # a batching-only change keeps the loaded model
            self.model = load_model(checkpoint)  # one assignment: in-flight batches keep the old
            self.checkpoint = checkpoint
        self.batching = {
            "max_batch_size": int(user_config.get("max_batch_size", MAX_BATCH_SIZE)),
            "batch_wait_timeout_s": float(user_config.get("batch_wait_timeout_s", BATCH_WAIT_S)),
        }
        self._generate_batch.set_max_batch_size(self.batching["max_batch_size"])
        self._generate_batch.set_batch_wait_timeout_s(self.batching["batch_wait_timeout_s"])

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("no model loaded")

    @api.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": _finite(self.model.describe())}

    @api.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        model = self.model
        return _finite({
            "model": model.describe(),
            "vocab_size": model.config.model.vocab_size,
            "max_len": model.max_len,
            "corpus": "oracle" if model.codec.tokenizer is None else "text",
            "config": model.config.to_dict(),
            "metrics": model.meta.get("metrics", {}),
            "phase": model.meta.get("phase"),
            "limits": {"n": MAX_N, "max_tokens": model.max_len, "temperature": MAX_TEMPERATURE,
                       "prefix_chars": MAX_PREFIX_CHARS, "body_bytes": MAX_BODY_BYTES},
            "batching": self.batching,
        })  # fmt: skip

    @api.post("/generate")
    async def generate(
        self,
        body: GenerateRequest,
        routed_seed: int | None = Header(
            None,
            alias=SEED_HEADER,
            ge=0,
            lt=SEED_LIMIT,
            description="the seed of a request without one, drawn by HAProxy before routing",
        ),
    ) -> GenerateResponse:
        model = self.model
        request, unknown = to_sample_request(model, body, routed_seed)
        result, batch_requests = await self._generate_batch(model, request)
        return GenerateResponse(
            samples=result.texts, tokens=result.tokens, lengths=result.lengths,
            seed=request.seed, unknown_words=unknown, batch_requests=batch_requests,
            model=ModelInfo(**_finite(model.describe())),
        )  # fmt: skip

    # [3] dynamic batching: concurrent calls arrive here as lists, one pass samples them all
    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _generate_batch(
        self, models: list[ServedModel], requests: list[SampleRequest]
    ) -> list[tuple[SampleResult, int]]:
        # Sampled right here, blocking this loop: requests arriving meanwhile queue up and form
        # the next batch. A worker thread (asyncio.to_thread) measured 2x slower at concurrency
        # 32 with batches of 3 instead of 15: tiny torch ops hold the GIL, so the replica's
        # request-receiving threads waited on it (scripts/bench_serve.py, BENCHMARKS.md).
        results = _sample_by_model(models, requests)
        return [(result, len(requests)) for result in results]


# -- building and running the application ----------------------------------------------------------
def build_app(
    checkpoint: str,
    *,
    replicas: int | None = None,
    num_cpus: float = 1.0,
    max_batch_size: int = MAX_BATCH_SIZE,
    batch_wait_timeout_s: float = BATCH_WAIT_S,
    torch_threads: int = 1,
    max_queued_requests: int = MAX_QUEUED,
    max_ongoing_requests: int | None = None,
):
    """The Serve application for `checkpoint`: `replicas` fixed replicas, or autoscaling (None).
    A replica samples up to `max_ongoing_requests` at once (default: two full batches, at least
    MAX_ONGOING_FLOOR); past `max_queued_requests` more waiting (-1: no limit) a request gets a
    503. Deploy it with `run_app`, which gives HAProxy the same limits."""
    options: dict[str, Any] = {
        "user_config": {
            "checkpoint": str(checkpoint),
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_s": batch_wait_timeout_s,
        },
        "max_ongoing_requests": max_ongoing_requests or max(MAX_ONGOING_FLOOR, 2 * max_batch_size),
        "max_queued_requests": max_queued_requests,
        "ray_actor_options": {"num_cpus": num_cpus},
    }
    if replicas is None:
        options["autoscaling_config"] = {**AUTOSCALING, "target_ongoing_requests": max_batch_size}
    else:
        options["num_replicas"] = replicas
    return GeneratorServer.options(**options).bind(torch_threads=torch_threads)


class ServeArgs(BaseModel):
    """Arguments of `app_builder` (`serve run raygan.serve.app:app_builder checkpoint=...` or the
    `args:` of an application in a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    replicas: int | None = Field(None, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    max_batch_size: int = Field(MAX_BATCH_SIZE, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(BATCH_WAIT_S, ge=0)
    torch_threads: int = Field(1, ge=1)
    max_queued_requests: int = Field(MAX_QUEUED, ge=-1)


def app_builder(args: dict[str, Any]):
    """Application builder for Serve's CLI and config files; the checkpoint is loaded here once
    so that a bad path fails now, not in every replica."""
    options = ServeArgs.model_validate(args)
    model = load_model(options.checkpoint)
    return build_app(model.directory, **options.model_dump(exclude={"checkpoint"}))


def start_server(
    checkpoint: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int | None = None,
    num_cpus: float = 1.0,
    max_batch_size: int = MAX_BATCH_SIZE,
    batch_wait_timeout_s: float = BATCH_WAIT_S,
    max_queued_requests: int = MAX_QUEUED,
    access_log: bool = False,
) -> str:
    """Serve `checkpoint` over HTTP on host:port and return the URL once it answers.

    Called again while Serve runs, it deploys the new checkpoint in place of the old one (the
    running Serve keeps its host and port); requests in flight complete. A checkpoint that does
    not load raises RayganError before Serve starts. Binds 127.0.0.1 unless told otherwise.
    """
    from raygan.run.ray_env import ensure_ray

    model = load_model(checkpoint)
    ensure_ray()
    from raygan.run.console import verbose

    if not verbose():  # this process's "Started Serve", "Application ... is ready" INFO lines
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # [4] one HTTP ingress, on the head node: 127.0.0.1 is only reachable there anyway. Which
    # one (HAProxy, or Serve's Python proxy) was fixed when Ray started: raygan.run.ray_env
    # per-request access logs cost the replica and the proxy ~1 ms each: off unless asked
    logging_config = {"enable_access_log": access_log, "log_level": "WARNING"}
    serve.start(
        http_options={"host": host, "port": port},
        proxy_location="HeadOnly",
        logging_config=logging_config,  # the controller's and proxy's INFO lines too
    )
    app = build_app(
        model.directory, replicas=replicas, num_cpus=num_cpus, max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s, max_queued_requests=max_queued_requests,
    )  # fmt: skip
    run_app(app, name=APP_NAME, route_prefix="/", logging_config=logging_config)
    return f"http://{host}:{port}"


def run_app(app, *, name: str, route_prefix: str, logging_config: dict | None = None) -> None:
    """`serve.run` for an application of `build_app`, with its limits given to HAProxy first
    (raygan.run.ray_env.limit_ingress: the replica's own queue limit counts only requests it has
    read, so under overload HAProxy must hold the rest)."""
    from raygan.run.ray_env import limit_ingress

    deployment = app._bound_deployment  # what Serve is given, not this module's constants again
    limit_ingress(name, deployment.max_ongoing_requests, deployment.max_queued_requests,
                  RETRY_AFTER_S)  # fmt: skip
    serve.run(app, name=name, route_prefix=route_prefix, logging_config=logging_config)


def shutdown_server() -> None:
    """Stop every Serve application, its replicas and its proxy (Ray itself keeps running)."""
    serve.shutdown()
