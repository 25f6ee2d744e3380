"""The HTTP API: routes, the JSON envelope of the original visualization API, and its errors.

Every answer is JSON in the same envelope, ``{"status": {"code", "description"}, ...}``;
a request the server refuses names the problem in ``status.details`` (and the
field in ``status.field``), never with a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tempfile
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from gridtsne import __version__
from gridtsne.errors import OptionError
from gridtsne.serve.config import ServeConfig
from gridtsne.serve.jobs import (
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    UNFINISHED,
    Job,
    KeyReused,
    QueueFull,
    SqliteQueue,
)
from gridtsne.serve.paths import INPUT_ID, JOB_ID, PathRefused, check_words, resolve_under
from gridtsne.serve.retention import Retention
from gridtsne.serve.worker import (
    INPUT_PREFIX,
    PAGE_NAME,
    PICTURE_NAMES,
    Dispatcher,
    disk_full,
    stop_leftover_workers,
)

#: Options the server decides: where photos, outputs and the cache are, and which model runs.
SERVER_DECIDES = ("paths", "output", "exclude", "cache", "model", "preprocess", "overwrite", "shard")
#: The codes of the original visualization API, by state.
JOB_STATUS = {
    QUEUED: (42001, "Visualization is pending"),
    RUNNING: (42001, "Visualization is pending"),
    SUCCEEDED: (42000, "Visualization succeeded"),
    FAILED: (42002, "Visualization failed"),
    CANCELLED: (42002, "Visualization was cancelled"),
}
OK = {"code": 10000, "description": "Ok"}
#: Codes of refused requests, by HTTP status.
ERROR_STATUS = {
    400: (42003, "Invalid request"),
    401: (11001, "Unauthorized"),
    404: (11002, "Not found"),
    405: (11006, "Method not allowed"),
    409: (11005, "Conflict"),
    410: (11007, "Expired"),
    413: (11003, "Too large"),
    429: (11004, "Too many jobs waiting"),
    500: (11000, "Internal error"),
    507: (11008, "Disk full"),
}
#: Free bytes a submit wants on --data's disk beyond its reserve before it prunes at once.
ROOM_FOR_A_JOB = 1 << 20
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
#: Paths served without a token: the OpenAPI page and its schema say nothing secret.
OPEN_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")


class Refused(Exception):
    """A request the server answers with an error envelope."""

    def __init__(self, http_status: int, details: str, field: str | None = None, headers=None):
        super().__init__(details)
        self.http_status, self.details, self.field, self.headers = http_status, details, field, headers


def error_response(http_status: int, details: str, field: str | None = None, headers=None) -> JSONResponse:
    code, description = ERROR_STATUS.get(http_status, (11000 + http_status, "Error"))
    status = {"code": code, "description": description, "details": details}
    if field is not None:
        status["field"] = field
    return JSONResponse({"status": status}, status_code=http_status, headers=headers)


class VisualizationRequest(BaseModel):
    """The body of ``POST /v2/visualizations``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    images: list[StrictStr] = Field(
        default=[], max_length=10_000, description="Files or folders, relative to the server's --root."
    )
    inputs: list[StrictStr] = Field(default=[], max_length=10_000, description="Ids of uploaded inputs.")
    options: dict[str, Any] = Field(
        default={}, description="Stage options by their command-line names: grid, seed, tile, fit, ..."
    )
    web_page: StrictBool = Field(default=False, description="Also make the zoomable web page.")
    continue_from: StrictStr | None = Field(
        default=None, alias="from",
        description="Id of an earlier, succeeded visualization whose map this one keeps: the photos in "
        "both keep their place and cell, new ones join their kin.",
    )  # fmt: skip


def check_labels(labels, web_page: bool) -> None:
    """Labels come inline, each path as the request names photos (relative to --root, or
    ``input:ID``): the server reads no file that a request names."""
    if labels is None:
        return
    if isinstance(labels, str):
        raise Refused(400, 'give the labels inline, as a list of {"path": ..., "label": ...}: the server '
                      "reads no labels file", "options.labels")  # fmt: skip
    if not web_page:
        raise Refused(400, 'labels colour the web page: ask for it with "web_page": true', "options.labels")
    seen: dict[str, tuple[int, str]] = {}
    for index, (path, label) in enumerate(labels):
        if path.startswith(INPUT_PREFIX):
            if not INPUT_ID.fullmatch(path[len(INPUT_PREFIX) :]):
                raise Refused(400, f"{path!r} is not input:ID (64 hex digits)", f"options.labels.{index}")
            key = path
        else:
            try:
                key = str(check_words(path))
            except PathRefused as error:
                raise Refused(400, str(error), f"options.labels.{index}") from None
        # Named here, as the client wrote them: render would name the server's paths.
        before = seen.setdefault(key, (index, label))
        if before[1] != label:
            raise Refused(400, f"{path!r} is labelled {label!r} here and {before[1]!r} in item {before[0]}",
                          f"options.labels.{index}")  # fmt: skip


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def job_output(job: Job, base: str, expires_at: float | None = None) -> dict:
    """The JSON of one job; ``expires_at``: when a finished job's files go (by age)."""
    code, description = JOB_STATUS[job.state]
    output: dict[str, Any] = {
        "id": job.id,
        "status": {"code": code, "description": description},
        "state": job.state,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
    }
    if expires_at is not None and job.state in FINISHED:
        output["expires_at"] = iso(expires_at)
    if job.state == RUNNING:
        output["percent_completed"] = round(job.percent, 1)  # a tenth: a large job moves often
        output["stage"] = job.stage
    if job.state in (FAILED, CANCELLED):
        output["status"]["details"] = job.error
    if job.state == SUCCEEDED and job.results:
        url = f"{base}v2/visualizations/{job.id}"
        results = job.results
        if results.get("layout"):
            output["layout"] = results["layout"]
        output["percent_completed"] = 100
        output["data"] = {
            "image": {"url": f"{url}/image", "width": results["width"], "height": results["height"]},
            "grid": {"rows": results["rows"], "cols": results["cols"], "images": results["images"]},
            "positions": {"csv": f"{url}/positions.csv", "json": f"{url}/positions.json"},
            "skipped": results["skipped"],
            "embeddings": {
                "computed": results["embeddings_computed"],
                "reused": results["embeddings_reused"],
            },
        }
        if results.get("web_page"):
            output["data"]["page"] = {"url": f"{url}/page/index.html"}
    return output


def create_app(config: ServeConfig) -> FastAPI:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        config.make_folders()
        state["queue"] = SqliteQueue(config.database)
        stop_leftover_workers(config)  # before their jobs run again
        requeued = state["queue"].requeue_unfinished()
        if requeued:
            print(f"gridtsne serve: re-queued {requeued} unfinished job(s)", flush=True)
        state["retention"] = Retention(config, state["queue"])
        state["dispatcher"] = Dispatcher(config, state["queue"], on_finished=state["retention"].wake)
        state["dispatcher"].start()
        state["retention"].start()
        yield
        state["retention"].stop()
        state["dispatcher"].stop()
        state["queue"].requeue_unfinished()

    app = FastAPI(
        title="gridtsne",
        version=__version__,
        description="Lay photos out on a grid so that similar photos are neighbours, asynchronously.",
        lifespan=lifespan,
    )

    def jobs() -> SqliteQueue:
        return state["queue"]

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused):
        return error_response(error.http_status, error.details, error.field, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problem = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        where = [str(part) for part in problem.get("loc", ())]
        field = ".".join(where[1:]) or None
        kind = problem.get("type", "")
        if kind == "json_invalid":
            detail = problem.get("ctx", {}).get("error", "")
            return error_response(400, f"the body is not valid JSON: {detail}".rstrip(": "))
        if kind == "extra_forbidden":
            known = ", ".join(VisualizationRequest.model_fields)
            return error_response(400, f"unknown field {field!r}: known are {known}", field)
        if where[:1] == ["body"] and not where[1:]:
            return error_response(400, f"the body must be a JSON object: {problem['msg']}")
        return error_response(400, f"{field or where[0]}: {problem['msg']}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        details = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404:
            details = f"no such path: {request.url.path}"
        return error_response(error.status_code, details, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception):
        import traceback

        traceback.print_exc()  # into the server's log; the client gets one line
        return error_response(500, f"unexpected {type(error).__name__}: see the server's log")

    @app.middleware("http")
    async def bearer_token(request: Request, call_next):
        """With tokens, each request must carry one; ``request.state.caller`` names whose it is."""
        request.state.caller = "anyone"
        if not config.tokens or request.url.path in OPEN_PATHS:
            return await call_next(request)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        sent = given.strip().encode("utf-8", "surrogateescape")
        # Every token compared, each in constant time: which one matched does not show in the timing.
        matched = [hmac.compare_digest(sent, token.encode()) for token in config.tokens]
        if scheme.lower() != "bearer" or not any(matched):
            return error_response(
                401, "send one of the server's tokens as 'Authorization: Bearer TOKEN'",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        token = config.tokens[matched.index(True)]
        request.state.caller = hashlib.sha256(token.encode()).hexdigest()[:16]
        return await call_next(request)

    @contextmanager
    def disk_room():
        """A full --data disk is the client's 507, not a 500: nothing was stored, retry later."""
        try:
            yield
        except Exception as error:
            if not disk_full(error):
                raise
            state["retention"].wake()
            raise Refused(507, "the server's disk is full: nothing was stored; retry later, when its "
                          "retention has made room", headers={"Retry-After": "60"}) from None  # fmt: skip

    def find_job(job_id: str) -> Job:
        job = jobs().get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            expired = jobs().expired(job_id) if JOB_ID.fullmatch(job_id) else None
            if expired is not None:
                raise Refused(410, f"visualization {job_id} was {expired['state']}; its files were removed "
                              f"on {iso(expired['expired_at'])}: {expired['why']}", "id")  # fmt: skip
            raise Refused(404, f"no visualization with id {job_id!r}", "id")
        return job

    def output_of(job: Job, request: Request) -> dict:
        return job_output(job, str(request.base_url), state["retention"].expires_at(job.updated_at))

    def resolve_request(body: VisualizationRequest) -> dict:
        options = dict(body.options)
        for name in options:
            if name in SERVER_DECIDES:
                raise Refused(400, f"{name!r} is set by the server, not by a request", f"options.{name}")
        from gridtsne.options import DEFAULT_MAX_PIXELS, PipelineOptions

        try:
            settings = PipelineOptions.from_flat({**options, "paths": [], "output": "mosaic.jpg"})
        except OptionError as error:
            worded = error.worded(lambda name: repr(name))
            raise Refused(400, f"{error.option}: {worded}", f"options.{error.option}") from None
        if settings.render.format == "html":
            raise Refused(400, "format 'html' is the web page: ask for it with \"web_page\": true",
                          "options.format")  # fmt: skip
        check_labels(settings.render.labels, body.web_page)
        if settings.embed.max_pixels > DEFAULT_MAX_PIXELS:
            raise Refused(400, f"max_pixels may not exceed {DEFAULT_MAX_PIXELS}", "options.max_pixels")
        # Words first, for every path, before any of them touches the disk.
        for index, given in enumerate(body.images):
            try:
                check_words(given)
            except PathRefused as error:
                raise Refused(400, str(error), f"images.{index}") from None
        for index, given in enumerate(body.inputs):
            if not INPUT_ID.fullmatch(given):
                raise Refused(400, f"{given!r} is not an input id (64 hex digits)", f"inputs.{index}")
        if body.continue_from is not None:
            earlier = jobs().get(body.continue_from) if JOB_ID.fullmatch(body.continue_from) else None
            if earlier is None:
                raise Refused(
                    400, f"no visualization with id {body.continue_from!r} to continue from", "from"
                )
            if earlier.state != SUCCEEDED:
                raise Refused(409, f"visualization {earlier.id} is {earlier.state}: only a succeeded one "
                              "can be continued", "from")  # fmt: skip
        if not body.images and not body.inputs:
            raise Refused(400, 'name at least one photo: "images" (paths) or "inputs" (upload ids)')
        paths = []
        for index, given in enumerate(body.images):
            try:
                paths.append(str(resolve_under(config.root, given)))
            except PathRefused as error:
                raise Refused(400, str(error), f"images.{index}") from None
        for index, given in enumerate(body.inputs):
            stored = config.inputs / given
            if not stored.is_file():
                raise Refused(400, f"no uploaded input with id {given!r}", f"inputs.{index}")
            paths.append(str(stored))
        return {"paths": paths, "options": options}

    @app.post("/v2/visualizations", status_code=202, summary="Schedule a visualization")
    @app.post("/v2/visualizations/", status_code=202, include_in_schema=False)
    def submit(
        body: VisualizationRequest,
        request: Request,
        idempotency_key: str | None = Header(
            default=None, description="Retrying with it returns the same job."
        ),
    ):
        if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise Refused(
                400, "Idempotency-Key must be 1 to 200 printable ASCII characters", "Idempotency-Key"
            )
        state["retention"].make_room(ROOM_FOR_A_JOB)
        try:
            with disk_room(), state["retention"].lock:  # what it names is not pruned before its job is queued
                resolved = resolve_request(body)
                record = {**body.model_dump(), **resolved}
                # A key is the caller's own: two clients that pick the same key get two jobs.
                scoped = f"{request.state.caller}:{idempotency_key}" if idempotency_key is not None else None
                job, created = jobs().submit(record, scoped, config.queue_limit)
        except QueueFull as error:
            raise Refused(429, str(error), headers={"Retry-After": str(error.retry_after)}) from None
        except KeyReused:
            raise Refused(409, "this Idempotency-Key was sent before with another body",
                          "Idempotency-Key") from None  # fmt: skip
        if created:
            state["dispatcher"].wake()
        location = f"{request.base_url}v2/visualizations/{job.id}"
        headers = {"Location": location}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(
            {"status": OK, "output": output_of(job, request)}, status_code=202, headers=headers
        )

    @app.get("/v2/visualizations", summary="List visualizations, newest first")
    @app.get("/v2/visualizations/", include_in_schema=False)
    def list_jobs(
        request: Request, page: int = Query(1, ge=1, le=1_000_000), per_page: int = Query(20, ge=1, le=1000)
    ):
        found, total = jobs().page(page, per_page)
        return {"status": OK, "outputs": [output_of(job, request) for job in found],
                "page": page, "per_page": per_page, "total": total}  # fmt: skip

    @app.get("/v2/visualizations/{job_id}", summary="Poll a visualization")
    def poll(job_id: str, request: Request):
        return {"status": OK, "output": output_of(find_job(job_id), request)}

    @app.delete("/v2/visualizations/{job_id}", summary="Cancel a visualization, or delete a finished one")
    def delete(job_id: str, request: Request):
        """A queued or running job is cancelled and its files removed; a finished one is forgotten too."""
        import shutil

        job = find_job(job_id)
        if job.state in UNFINISHED:
            jobs().cancel(job_id)
            state["dispatcher"].stop_job(job_id)
            shutil.rmtree(config.job_folder(job_id), ignore_errors=True)
            return {"status": OK, "output": output_of(jobs().get(job_id), request)}
        jobs().delete(job_id)
        shutil.rmtree(config.job_folder(job_id), ignore_errors=True)
        return {"status": OK, "output": {"id": job_id, "state": "deleted"}}

    def finished(job_id: str) -> tuple[Job, Path]:
        job = find_job(job_id)
        if job.state != SUCCEEDED:
            raise Refused(404, f"visualization {job_id} has no results: it is {job.state}", "id")
        return job, config.job_folder(job_id)

    @app.get("/v2/visualizations/{job_id}/image", summary="The picture", response_class=FileResponse)
    def image(job_id: str):
        job, folder = finished(job_id)
        name = job.results["picture"]
        if name not in PICTURE_NAMES.values():
            raise Refused(404, "no picture")
        return FileResponse(folder / name)

    @app.get("/v2/visualizations/{job_id}/positions.{table}", summary="Each photo's cell: csv or json")
    def positions(job_id: str, table: str):
        if table not in ("csv", "json"):
            raise Refused(404, "positions come as positions.csv or positions.json", "format")
        _, folder = finished(job_id)
        media = "text/csv; charset=utf-8" if table == "csv" else "application/json"
        return FileResponse(folder / f"positions.{table}", media_type=media)

    @app.get("/v2/visualizations/{job_id}/page/{file:path}", summary="The zoomable web page")
    def page(job_id: str, file: str, request: Request):
        job, folder = finished(job_id)
        if not job.results.get("web_page"):
            raise Refused(404, 'this visualization has no web page: submit with "web_page": true')
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        if "%" in raw:
            raise Refused(400, "percent-encoded names are refused in page paths", "path")
        try:
            relative = check_words(file)
        except PathRefused as error:
            raise Refused(400, str(error), "path") from None
        page_folder = (folder / Path(PAGE_NAME).stem).resolve()
        target = (page_folder / relative).resolve()
        if not target.is_relative_to(page_folder):
            raise Refused(400, f"{file!r} leads out of the page", "path")
        if not target.is_file():
            raise Refused(404, f"no file {file!r} in the page", "path")
        return FileResponse(target)

    @app.post(
        "/v2/inputs",
        status_code=201,
        summary="Upload photos (multipart/form-data, any field name)",
        openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
            "type": "object", "properties": {"file": {"type": "array", "items": {"type": "string",
            "format": "binary"}}}}}}}},
    )  # fmt: skip
    async def upload(request: Request):
        limit = config.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_files * (limit + 4096):
            raise Refused(413, f"the body is larger than {config.max_files} files of {limit} bytes")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise Refused(400, "upload photos as multipart/form-data")
        try:
            form = await request.form(max_files=config.max_files, max_fields=config.max_files)
        except StarletteHTTPException as error:
            if "Too many files" in str(error.detail):
                raise Refused(413, f"at most {config.max_files} files per request") from None
            raise Refused(400, f"malformed multipart body: {error.detail}") from None
        uploads = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)]
        if not uploads:
            raise Refused(400, "the request holds no file")
        needed = int(declared) if declared is not None and declared.isdigit() else limit
        await run_in_threadpool(state["retention"].make_room, needed)
        staging = config.inputs / ".incoming"
        staging.mkdir(parents=True, exist_ok=True)
        kept: list[tuple[str, Path, str, int]] = []
        try:
            with disk_room():
                answers = await _receive(uploads, staging, limit, kept)
        finally:
            for _, temporary, _, _ in kept:
                temporary.unlink(missing_ok=True)
            await form.close()
        state["retention"].wake()  # --data grew: keep it within its limit between job ends too
        return JSONResponse({"status": OK, "inputs": answers}, status_code=201)

    async def _receive(uploads, staging: Path, limit: int, kept: list) -> list[dict]:
        """Write each upload to a temporary file (each listed in ``kept`` at once, so that it is
        removed whatever happens), then check and store them."""
        for name, upload in uploads:
            shown = upload.filename or name
            handle = tempfile.NamedTemporaryFile(dir=staging, delete=False)
            kept.append((shown, Path(handle.name), "", 0))
            digest, size = hashlib.sha256(), 0
            with handle:
                while chunk := await upload.read(1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise Refused(413, f"{shown!r} is larger than {limit} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
            kept[-1] = (shown, Path(handle.name), digest.hexdigest(), size)
        return await run_in_threadpool(_check_and_store, config, kept)

    app.state.config = config
    app.state.jobs = state
    return app


def _check_and_store(config: ServeConfig, kept: list[tuple[str, Path, str, int]]) -> list[dict]:
    """Refuse the lot if any file is not an image (with embed's reasons); else store each by content."""
    from gridtsne.images import UnreadableImage, open_image

    refused, answers = [], []
    for filename, temporary, digest, size in kept:
        try:
            _, (width, height) = open_image(temporary, draft_px=32)
        except UnreadableImage as error:
            refused.append(f"{filename}: {error}")
            continue
        answers.append({"id": digest, "filename": filename, "bytes": size, "width": width, "height": height})
    if refused:
        raise Refused(400, "not images, nothing stored: " + "; ".join(refused), "files")
    for _, temporary, digest, _ in kept:
        target = config.inputs / digest
        if target.exists():
            os.utime(target)  # uploaded again: its age for retention starts anew
        else:
            os.replace(temporary, target)
    return answers


def serve(config: ServeConfig, host: str, port: int) -> None:
    """Run the server until interrupted (Ctrl-C or SIGTERM stops the workers too)."""
    import uvicorn

    config.make_folders()
    print(f"gridtsne serve: photos from {config.root}", flush=True)
    print(f"gridtsne serve: jobs, uploads and results in {config.data}", flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"gridtsne serve: listening on http://{shown}:{port} (API docs at /docs)", flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
