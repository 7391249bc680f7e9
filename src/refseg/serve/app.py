"""``refseg serve``'s web app: ``POST /segment``, ``GET /health`` and a browser page at ``/``.

    app = create_app(refseg.load("global-local", clip="shapes-vit"), ServeSettings(timeout_s=30))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Any :class:`~refseg.systems.System` can be served. Dense systems' results carry a heat map
(a PNG data URL); systems that take visual prompts accept an example image and mask
(multipart fields ``prompt_image`` and ``prompt_mask``) instead of or besides the text.

Model work runs in a small thread pool so the event loop stays free; each request has a
deadline (504 when it passes), and :class:`~refseg.serve.service.SegmentService` lets one
request at a time use the model. Every error is JSON ``{"error": "..."}`` with a 4xx/5xx
status; no bad request can take the server down.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from functools import partial
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from refseg import __version__
from refseg.errors import ImageError, InputError, OptionError, RefsegError
from refseg.masks import encode_rle, mask_bbox
from refseg.serve.guards import BodyLimitMiddleware, SameSiteMiddleware
from refseg.serve.service import (
    DeadlineExceededError,
    ImageTooLargeError,
    NotReadyError,
    Outcome,
    SegmentService,
    UnsupportedImageError,
)
from refseg.systems import System
from refseg.visualize import heatmap_image, mask_image

log = logging.getLogger("refseg.serve")

STATIC_DIR = resources.files("refseg") / "serve" / "static"
# Heat maps are sent at most this many pixels on their long side (the page scales them).
HEATMAP_SIDE = 512
# What invalid UTF-8 in a text part becomes: Starlette decodes a part that is not UTF-8 as
# Latin-1, which turns bytes 0x80-0x9F into C1 control characters (never typed in text);
# U+FFFD is what other decoders leave. Latin-1 letters (0xA0-0xFF) cannot be told apart.
_NOT_UTF8 = re.compile("[\u0080-\u009f\ufffd]")
# Room for the multipart envelope and text fields on top of the image in Content-Length.
FORM_OVERHEAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Limits that keep one shared model responsive. Operational choices, not from a paper."""

    # Largest accepted upload: a 20 MiB file covers full-resolution phone photos.
    max_upload_bytes: int = 20 * 1024 * 1024
    # Refuse images above 100 megapixels outright (decoding alone would take ~300 MB);
    # smaller ones are downscaled by the Segmenter's own max_pixels before any model work.
    max_image_pixels: int = 100_000_000
    # Expressions per request, and characters per expression (CLIP reads 77 tokens anyway).
    max_texts: int = 16
    max_text_chars: int = 1000
    # Seconds a request may take, queueing for the model included (504 after that).
    timeout_s: float = 60.0
    # Distinct images whose proposals and features are kept for repeated questions, and the
    # bytes they may hold together (a 2048x2048 working image with 100 proposals is ~430 MB).
    cache_size: int = 8
    cache_bytes: int = 512 * 1024 * 1024
    # Ranked proposals (with masks) returned per expression.
    top_proposals: int = 10
    # Threads that wait for the model; requests beyond them queue (still under the deadline).
    workers: int = 4

    # Host names requests may address (None: any); the refseg serve command sets them from
    # its bind address. Origins other than the server's own that may post (("*",): any).
    allowed_hosts: tuple[str, ...] | None = None
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and value <= 0:
                raise InputError(f"{field.name} must be positive; got {value}")


# --------------------------------------------------------------------------- schema
class RLE(BaseModel):
    """COCO run-length encoding (column-major, compressed ``counts`` string)."""

    size: list[int] = Field(description="[height, width]")
    counts: str


class ProposalOut(BaseModel):
    index: int = Field(description="the proposal's index in the generator's output")
    score: float
    bbox: list[int] | None = Field(description="COCO [x, y, width, height]; null if empty")
    area: int
    segmentation: RLE


class ResultOut(BaseModel):
    text: str = Field(description="the expression; empty for a visual prompt alone")
    phrase: str = Field(description="target noun phrase used for the local text feature")
    method: str = Field(description="the method or (dense systems) the system name")
    proposal_generator: str | None = Field(
        None, description="the proposal generator that ran (sam, superpixel, ...); null: dense"
    )
    score: float | None = Field(
        description="the chosen proposal's score (dense: the highest probability); null if none"
    )
    proposal: int | None = Field(description="index of the chosen proposal")
    bbox: list[int] | None
    area: int
    num_proposals: int
    segmentation: RLE = Field(description="the mask at the original image size")
    proposals: list[ProposalOut] = Field(description="best proposals first, with their masks")
    dense: bool = Field(False, description="a dense system's result (probability map)")
    heatmap: str | None = Field(
        None, description="dense: the probability map in colour, a PNG data URL; else null"
    )


class ImageOut(BaseModel):
    width: int
    height: int
    hash: str = Field(description="SHA-256 of the uploaded bytes (the cache key)")


class SegmentOut(BaseModel):
    results: list[ResultOut]
    image: ImageOut
    cached: bool = Field(description="proposals and visual features came from the cache")
    seconds: float


class CacheOut(BaseModel):
    entries: int
    capacity: int
    bytes: int = Field(description="bytes held by the cached images' proposals and features")
    max_bytes: int | None
    hits: int
    misses: int


class LimitsOut(BaseModel):
    max_upload_bytes: int
    max_image_pixels: int
    max_texts: int
    max_text_chars: int
    timeout_s: float
    top_proposals: int


class HealthOut(BaseModel):
    status: Literal["ready", "loading", "failed"]
    system: str | None = Field(description="the served system (global-local, maskclip, ...)")
    dense: bool | None = Field(description="it predicts probability maps (heat maps)")
    visual_prompts: bool | None = Field(description="it takes an example image and mask")
    settings: dict[str, Any] | None = Field(description="the system's describe()")
    model: str | None
    device: str | None
    method: str | None
    proposals: str | None
    methods: list[str]
    error: str | None
    cache: CacheOut
    limits: LimitsOut
    version: str


class ErrorOut(BaseModel):
    error: str


# ---------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An HTTP error with a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def status_for(exc: RefsegError) -> int:
    """HTTP status of a user-facing error from the service."""
    for kind, status in (
        (UnsupportedImageError, 415),
        (ImageTooLargeError, 413),
        (ImageError, 400),
        (DeadlineExceededError, 504),
        (OptionError, 422),
        (NotReadyError, 503),
    ):
        if isinstance(exc, kind):
            return status
    return 400


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorOut} for status in statuses}


# ---------------------------------------------------------------------------- render
def render_json(outcome: Outcome, top: int) -> dict[str, Any]:
    """The JSON body of ``/segment``: each result with its RLE and top proposals' RLEs."""
    memo: dict[int, dict[str, Any]] = {}  # proposals are shared by all expressions

    def proposal(result: Any, index: int) -> dict[str, Any]:
        if index not in memo:
            mask = result.proposal_mask(index)
            box = mask_bbox(mask)
            memo[index] = {
                "bbox": list(box) if box else None,
                "area": int(mask.sum()),
                "segmentation": encode_rle(mask),
            }
        return {"index": index, "score": float(result.scores[index]), **memo[index]}

    results = []
    for result in outcome.results:
        record = result.to_dict(top=0, rle=True)
        record["proposals"] = [proposal(result, int(i)) for i in result.ranking[:top]]
        record["dense"] = result.probability is not None
        record["heatmap"] = None if result.probability is None else heatmap_url(result.probability)
        results.append(record)
    return {
        "results": results,
        "image": {"width": outcome.width, "height": outcome.height, "hash": outcome.digest},
        "cached": outcome.cached,
        "seconds": round(outcome.seconds, 4),
    }


def heatmap_url(probability: Any) -> str:
    """A probability map as a coloured PNG data URL, at most :data:`HEATMAP_SIDE` long."""
    picture = heatmap_image(probability)
    picture.thumbnail((HEATMAP_SIDE, HEATMAP_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_png(outcome: Outcome) -> bytes:
    """The single result's mask as an 8-bit PNG (255 = object)."""
    buffer = io.BytesIO()
    mask_image(outcome.results[0].mask).save(buffer, format="PNG")
    return buffer.getvalue()


def check_query_string(request: Request) -> None:
    """Refuse (422) URL parameters other than ``format``: options go in the form body, and
    one in the URL (``?alpha=0.0``) must not be silently ignored."""
    misplaced = sorted(set(request.query_params) - {"format"})
    if misplaced:
        fields = " ".join(f"-F {name}=..." for name in misplaced)
        raise ApiError(
            422,
            f"{', '.join(misplaced)} given in the URL: send options as form fields "
            f"({fields}); only format=png goes in the URL",
        )


def check_texts(
    texts: list[str], settings: ServeSettings, *, allow_none: bool = False
) -> list[str]:
    """Strip the expressions and enforce the limits (raises :class:`ApiError`); no
    expression at all is fine with ``allow_none`` (a visual prompt alone)."""
    texts = [t.strip() for t in texts]
    if any(_NOT_UTF8.search(t) for t in texts):
        raise ApiError(422, "an expression is not valid UTF-8 text: send text parts as UTF-8")
    if not texts and not allow_none:
        raise ApiError(
            422, "invalid request: text: give an expression (or an example image and its mask)"
        )
    if any(not t for t in texts):
        raise ApiError(422, "an expression is empty: describe the object to segment")
    if len(texts) > settings.max_texts:
        raise ApiError(
            400, f"{len(texts)} expressions given; at most {settings.max_texts} per request"
        )
    longest = max((len(t) for t in texts), default=0)
    if longest > settings.max_text_chars:
        raise ApiError(
            400, f"an expression has {longest} characters; at most {settings.max_text_chars}"
        )
    return texts


# ------------------------------------------------------------------------------- app
class WorkerPool:
    """The threads that run model work; recreated if the app is started again."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, "refseg-serve")
            return self._executor

    def shutdown(self) -> None:
        """Stop taking work; running jobs finish in the background (they cannot be killed)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None


def create_app(
    segmenter: System | Callable[[], System],
    settings: ServeSettings | None = None,
) -> FastAPI:
    """The FastAPI app serving ``segmenter``.

    Args:
        segmenter: a ready :class:`~refseg.systems.System` (e.g. a ``Segmenter``), or a
            function that builds one; the function runs in a background thread at start-up
            and ``/health`` says ``"loading"`` (``/segment`` answers 503) until it returns.
        settings: limits; defaults to :class:`ServeSettings()`.
    """
    settings = settings or ServeSettings()
    ready = segmenter if isinstance(segmenter, System) else None
    if ready is None and not callable(segmenter):
        raise TypeError("segmenter must be a System or a function returning one")
    service = SegmentService(
        ready,
        cache_size=settings.cache_size,
        cache_bytes=settings.cache_bytes,
        max_image_pixels=settings.max_image_pixels,
    )
    pool = WorkerPool(settings.workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ready is None:
            service.load_in_background(segmenter)
        yield
        pool.shutdown()

    app = FastAPI(
        title="refseg",
        version=__version__,
        summary="Referring image segmentation: segment the object a sentence describes.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        problems = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail)
        return _error(422, f"invalid request: {problems}", detail=jsonable_encoder(detail))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    # Added last = runs first: the same-site check, then the body limit (see guards).
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        message=partial(_too_large_message, settings=settings),
    )
    app.add_middleware(
        SameSiteMiddleware, hosts=settings.allowed_hosts, origins=settings.allowed_origins
    )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"))

    @app.get(
        "/health",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "loading or failed"}},
    )
    async def health() -> JSONResponse:
        """Whether the model is ready, what it is, and the server's limits."""
        info = service.describe()
        info["limits"] = {name: getattr(settings, name) for name in LimitsOut.model_fields}
        info["version"] = __version__
        return JSONResponse(info, status_code=200 if info["status"] == "ready" else 503)

    @app.post(
        "/segment",
        response_model=SegmentOut,
        responses={
            200: {"content": {"image/png": {}}, "description": "JSON, or a PNG with ?format=png"},
            **_error_responses(400, 413, 415, 422, 503, 504),
        },
    )
    async def segment(
        request: Request,
        image: Annotated[UploadFile, File(description="the image (PNG, JPEG, WebP, ...)")],
        text: Annotated[
            list[str] | None,
            Form(description="a referring expression; repeat the field (optional with a prompt)"),
        ] = None,
        method: Annotated[str | None, Form(description="method name (see /health)")] = None,
        alpha: Annotated[float | None, Form(ge=0, le=1, description="global/local mix")] = None,
        beta: Annotated[float | None, Form(ge=0, le=1, description="sentence/phrase mix")] = None,
        k: Annotated[int | None, Form(ge=1, description="ViT: masked final blocks")] = None,
        threshold: Annotated[
            float | None, Form(ge=0, lt=1, description="dense systems: mask = probability > it")
        ] = None,
        prompt_image: Annotated[
            UploadFile | None, File(description="visual prompt: an example image of the object")
        ] = None,
        prompt_mask: Annotated[
            UploadFile | None, File(description="visual prompt: the object's mask in it")
        ] = None,
        format: Annotated[
            Literal["json", "png"], Query(description="png: the mask of a single expression")
        ] = "json",
    ) -> Any:
        """Segment the object each expression describes (or the example prompt shows).

        Repeated requests with the same image bytes reuse its proposals and visual
        features (``cached: true``). Options a system does not take are a 400.
        """
        deadline = time.monotonic() + settings.timeout_s
        check_query_string(request)
        texts = check_texts(text or [], settings, allow_none=prompt_image is not None)
        if format == "png" and len(texts) != 1:
            raise ApiError(400, f"format=png needs exactly one expression; got {len(texts)}")
        if image.size is not None and image.size > settings.max_upload_bytes:
            raise ApiError(413, _too_large_message(image.size, settings))
        data = await image.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, _too_large_message(len(data), settings))
        params: dict[str, Any] = {
            "method": method or None,
            "alpha": alpha,
            "beta": beta,
            "k": k,
            "threshold": threshold,
        }
        if (prompt_image is None) != (prompt_mask is None):
            raise ApiError(422, "a visual prompt needs both prompt_image and prompt_mask")
        for name, upload in (("prompt_image", prompt_image), ("prompt_mask", prompt_mask)):
            if upload is not None:
                params[name] = await _read_upload(upload, settings)
        job = partial(_job, service, data, texts, params, deadline, format, settings)
        loop = asyncio.get_running_loop()
        try:
            body = await asyncio.wait_for(
                loop.run_in_executor(pool.executor(), job), timeout=settings.timeout_s
            )
        except (asyncio.TimeoutError, DeadlineExceededError):
            raise ApiError(
                504,
                f"the request took longer than {settings.timeout_s:g} s: try a smaller image, "
                "fewer expressions, or again when the server is less busy",
            ) from None
        except RefsegError as exc:
            raise ApiError(status_for(exc), str(exc)) from None
        except Exception as exc:  # a bug, not the user's fault: log it, keep serving
            log.exception("segment failed")
            raise ApiError(500, f"internal error: {type(exc).__name__}: {exc}") from None
        if isinstance(body, bytes):
            return Response(body, media_type="image/png")
        return JSONResponse(body)

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app


def _job(
    service: SegmentService,
    data: bytes,
    texts: list[str],
    params: dict[str, Any],
    deadline: float,
    format: str,
    settings: ServeSettings,
) -> dict[str, Any] | bytes:
    """Runs in a worker thread: the model work, then encoding (outside the model lock)."""
    outcome = service.run(data, texts, deadline=deadline, **params)
    if format == "png":
        return render_png(outcome)
    return render_json(outcome, settings.top_proposals)


async def _read_upload(upload: UploadFile, settings: ServeSettings) -> bytes:
    """An extra uploaded file (a visual prompt), within the upload limit (else 413)."""
    if upload.size is not None and upload.size > settings.max_upload_bytes:
        raise ApiError(413, _too_large_message(upload.size, settings))
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, _too_large_message(len(data), settings))
    return data


def _too_large_message(size: int, settings: ServeSettings) -> str:
    limit = settings.max_upload_bytes / 2**20
    return f"the upload is {size / 2**20:.1f} MiB; this server accepts at most {limit:g} MiB"
