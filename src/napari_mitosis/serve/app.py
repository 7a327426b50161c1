"""The models over HTTP: a FastAPI application (the ``serve`` extra) with a small web page.

Models (checkpoints, published formats or registered names) are loaded once; concurrent
classify requests share forward passes (`batching.Batcher`); whole-slide jobs run on Dask
(`jobs.JobRunner`). Every error is JSON ``{"error": …}`` saying what was wrong: 400 for a
file that is not a readable image, 401 without the bearer token when one is set, 403 for a
slide outside the slides folder, 404 for an unknown model, job or file, 413 for a body over
the upload limit — refused while it streams in, before it is all buffered — 429 when the
job queue is full and 503 when jobs cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from napari_mitosis import __version__
from napari_mitosis.io.geojson import candidate_class
from napari_mitosis.models.card import ModelCard
from napari_mitosis.serve.batching import Batcher
from napari_mitosis.serve.jobs import STEPS, JobError, JobRunner, ServedRefs, public

API = "/v1"
PAGE = Path(__file__).with_name("page.html")


@dataclass
class ServedModel:
    """One loaded model and the lock its forward passes take (one at a time per model)."""

    name: str
    card: ModelCard
    predictor: Any
    lock: threading.Lock
    ref: str = ""  # the checkpoint path or registry name it was loaded from
    batcher: Batcher | None = None  # classifiers: requests share forward passes


def served_refs(models: dict[str, ServedModel]) -> ServedRefs:
    """The served models a whole-slide job may use, by task."""
    return ServedRefs(
        classifiers={n: m.ref for n, m in models.items() if m.card.task == "classification"},
        detectors={n: m.ref for n, m in models.items() if m.card.task == "detection"},
    )


def load_served(
    refs: list[str], device: str = "cpu", *, window_s: float = 0.005, max_batch: int = 64
) -> dict[str, ServedModel]:
    """Load each model (path or registered name) once, named by its registry name or file."""
    from napari_mitosis.classification.predictor import ClassifierPredictor
    from napari_mitosis.models.checkpoint import load_checkpoint
    from napari_mitosis.models.detector import DetectionPredictor

    served: dict[str, ServedModel] = {}
    for ref in refs:
        model, card = load_checkpoint(ref, device=device)
        if card.task == "classification":
            predictor: Any = ClassifierPredictor(model, card, device)
        elif card.task == "detection":
            predictor = DetectionPredictor(model, card, device)
        else:
            raise ValueError(f"{ref}: a {card.task} model is not served (classify, detect)")
        name = Path(str(ref)).stem if Path(str(ref)).suffix else Path(str(ref)).name
        if name in served:
            raise ValueError(f"{ref}: a second model named {name}")
        served[name] = ServedModel(name, card, predictor, threading.Lock(), str(ref))
        if card.task == "classification":
            served[name].batcher = _classify_batcher(served[name], window_s, max_batch)
    if not served:
        raise ValueError("give at least one model to serve")
    return served


def _classify_batcher(served: ServedModel, window_s: float, max_batch: int) -> Batcher:
    from napari_mitosis.classification.run import classify_images

    def run(images: list[np.ndarray]) -> np.ndarray:
        with served.lock:
            return np.asarray(classify_images(images, served.predictor))

    return Batcher(run, window_s=window_s, max_images=max_batch)


class JobRequest(BaseModel):
    """A whole-slide job: a slide under the slides folder and the steps to run."""

    slide: str = Field(description="path relative to the server's slides folder")
    steps: list[str] = Field(default=list(STEPS), description=f"some of {list(STEPS)}")
    classifier: str | None = Field(default=None, description="a served classifier")
    detector: str | None = Field(default=None, description="a served detector")


class UploadLimit:
    """ASGI middleware: a body over ``max_bytes`` gets 413 — at once from its declared
    length, or as soon as the streamed bytes pass the limit (chunked uploads)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        message = {"error": f"the upload is over the server's limit of {limit / 2**20:g} MB"}
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await JSONResponse(message, status_code=413)(scope, receive, send)
            return
        seen = 0
        refused = False

        async def limited_receive() -> Any:
            # Past the limit: answer 413 now, and tell the application the client left,
            # so it stops reading; nothing more of the body is buffered.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            item = await receive()
            if item["type"] == "http.request":
                seen += len(item.get("body", b""))
                if seen > limit:
                    refused = True
                    await JSONResponse(message, status_code=413)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return item

        async def guarded_send(item: Any) -> None:
            if not refused:  # after a refusal the application's own answer is dropped
                await send(item)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise


def read_image(upload: UploadFile, data: bytes) -> np.ndarray:
    """An uploaded PNG/JPEG/TIFF as 8-bit RGB; 400 naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    name = upload.filename or "the upload"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("RGB", "RGBA", "L", "P", "LA"):
                raise HTTPException(
                    400, f"{name}: {image.mode} pixels; send an 8-bit RGB or grey image"
                )
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise HTTPException(
            400, f"{name}: not a readable PNG, JPEG or TIFF image ({err})"
        ) from None


def create_app(
    models: dict[str, ServedModel],
    *,
    token: str | None = None,
    max_upload_mb: float = 50.0,
    jobs: JobRunner | None = None,
) -> Any:
    """The application; ``uvicorn.run(create_app(...))`` serves it. ``token``: the bearer
    token every ``/v1`` call but ``health`` needs; ``jobs``: runs whole-slide jobs (none:
    the job routes answer 503)."""
    app = FastAPI(
        title="napari-mitosis",
        version=__version__,
        description="Mitosis detection and patch classification over HTTP.",
    )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(JobError)
    async def _job_error(_request: Request, err: JobError) -> JSONResponse:
        headers = {"Retry-After": "30"} if err.status == 429 else None
        return JSONResponse({"error": str(err)}, status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a bearer token is required (Authorization: Bearer …)")

    def pick(name: str | None, task: str) -> ServedModel:
        fitting = [m for m in models.values() if m.card.task == task]
        if name is None:
            if not fitting:
                raise HTTPException(404, f"no {task} model is served")
            return fitting[0]
        if name not in models or models[name].card.task != task:
            known = ", ".join(m.name for m in fitting) or "none"
            raise HTTPException(404, f"{name}: no such {task} model (served: {known})")
        return models[name]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text()

    @app.get(f"{API}/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "models": sorted(models)}

    @app.get(f"{API}/models", dependencies=[Depends(authorised)])
    def cards() -> dict[str, Any]:
        return {name: asdict(m.card) for name, m in models.items()}

    @app.post(f"{API}/classify", dependencies=[Depends(authorised)])
    async def classify(
        image: Annotated[list[UploadFile], File(description="PNG/JPEG/TIFF images")],
        model: Annotated[str | None, Form(description="a served classifier")] = None,
    ) -> dict[str, Any]:
        """Class probabilities (summing to 1) of whole small images or patches."""
        served = pick(model, "classification")
        pixels = [read_image(u, await u.read()) for u in image]
        if served.batcher is None:  # a classifier is always loaded with one
            raise HTTPException(500, f"{served.name}: no batcher")
        scores = await served.batcher(pixels)
        card = served.card
        results = []
        for upload, score in zip(image, scores, strict=True):
            if np.ndim(score) == 0:  # one sigmoid output: classes[1]'s probability
                probabilities = [1.0 - float(score), float(score)]
                label = card.classes[1] if float(score) >= card.threshold else card.classes[0]
                threshold: float | None = card.threshold
            else:
                probabilities = [float(p) for p in score]
                label = card.classes[int(np.argmax(score))]
                threshold = None
            results.append(
                {
                    "image": upload.filename,
                    "model": served.name,
                    "classes": list(card.classes),
                    "probabilities": probabilities,
                    "label": label,
                    "threshold": threshold,
                }
            )
        return {"results": results}

    @app.post(f"{API}/detect", dependencies=[Depends(authorised)])
    async def detect(
        image: Annotated[UploadFile, File(description="a high-power field (PNG/JPEG/TIFF)")],
        mpp: Annotated[
            float | None, Form(gt=0, description="its µm/px (default: the model's)")
        ] = None,
        model: Annotated[str | None, Form(description="a served detector")] = None,
        subtype: Annotated[
            str | None, Form(description="a served crop classifier for each candidate")
        ] = None,
        verify: Annotated[
            str | None, Form(description="a served second-stage classifier (p_mitosis)")
        ] = None,
    ) -> dict[str, Any]:
        """Mitosis boxes with scores, in pixels and µm; with ``subtype``/``verify``, each
        candidate's crop probabilities (``p_atypical``, ``p_mitosis``)."""
        from napari_mitosis.detection.candidates import classify_candidates
        from napari_mitosis.detection.run import detect_array

        served = pick(model, "detection")
        crops = {
            k: pick(n, "classification") for k, n in (("subtype", subtype), ("verify", verify)) if n
        }
        pixels = read_image(image, await image.read())
        size = mpp or served.card.mpp or 1.0

        def run() -> Any:
            with served.lock:
                found = detect_array(pixels, served.predictor, mpp=(size, size))
            if not crops:
                return found, None
            with contextlib.ExitStack() as held:
                for name in sorted({c.name for c in crops.values()}):  # each lock once
                    held.enter_context(models[name].lock)
                scores = classify_candidates(
                    pixels,
                    found.centres,
                    mpp=size,
                    names=(
                        getattr(crops.get("subtype"), "name", None),
                        getattr(crops.get("verify"), "name", None),
                    ),
                    **{k: c.predictor for k, c in crops.items()},
                )
            return found, scores

        found, scores = await asyncio.to_thread(run)
        boxes = np.asarray(found.boxes, float).reshape(-1, 4)
        extra: dict[str, Any] = {}
        if scores is not None:
            extra = {k: [float(v) for v in col] for k, col in scores.columns.items()}
            extra["classifiers"] = scores.models
        return {
            **extra,
            "image": image.filename,
            "model": served.name,
            "mpp": size,
            "count": len(boxes),
            # what every writer calls a model's output until a reviewer decides
            "classes": [candidate_class(c) for c in found.classes],
            "boxes_px": boxes.round(2).tolist(),
            "boxes_um": (boxes * size).round(3).tolist(),
            "scores": [float(s) for s in found.scores],
        }

    def runner() -> JobRunner:
        if jobs is None:
            raise JobError(503, "jobs are off: start serve with --slides-root and --results")
        return jobs

    @app.post(f"{API}/jobs", status_code=202, dependencies=[Depends(authorised)])
    def submit(request: JobRequest) -> dict[str, Any]:
        """Start the whole-slide pipeline on a slide; follow it at ``/v1/jobs/{id}``."""
        job = runner().submit(request.slide, request.steps, request.classifier, request.detector)
        return public(runner().get(job))

    @app.get(f"{API}/jobs", dependencies=[Depends(authorised)])
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [public(r) for r in runner().store.all()]}

    @app.get(f"{API}/jobs/{{job}}", dependencies=[Depends(authorised)])
    def job_status(job: str) -> dict[str, Any]:
        return public(runner().get(job))

    @app.delete(f"{API}/jobs/{{job}}", dependencies=[Depends(authorised)])
    def cancel(job: str) -> dict[str, Any]:
        """Cancel a queued or running job; a running slide stops within a batch."""
        return runner().cancel(job)

    @app.get(f"{API}/jobs/{{job}}/results", dependencies=[Depends(authorised)])
    def results(job: str) -> dict[str, Any]:
        return {"id": job, "files": runner().result_files(job)}

    @app.get(f"{API}/jobs/{{job}}/results/{{name:path}}", dependencies=[Depends(authorised)])
    def result_file(job: str, name: str) -> FileResponse:
        return FileResponse(runner().result_path(job, name))

    if max_upload_mb:
        app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 2**20))
    return app
