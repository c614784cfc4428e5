"""The FastAPI app: OpenAI's routes over one loaded model, its error shape, auth and limits."""

from contextlib import asynccontextmanager
from typing import Optional

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .errors import RETRY_AFTER_S, RequestError, as_request_error, error_response
from .routes import router
from .state import ServerState, check_key
from .limits import DEFAULT_MAX_BODY_MB, DEFAULT_MAX_QUEUE, DEFAULT_TIME_LIMIT_S
from .worker import ClientGone, QueueFull, Worker


def _validation_param(loc) -> Optional[str]:
    """`messages[0].content` from pydantic's ("body", "messages", 0, "content")."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "form") else loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or None


class BodyLimit:
    """413 in OpenAI's shape for a body over the limit: refused before it is read when its
    Content-Length says so, cut off as it arrives otherwise."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            response = error_response(413, body_limit_message(self.max_bytes),
                                      code="body_too_large")
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413)
            return message

        return await self.app(scope, limited, send)


def body_limit_message(max_bytes: int) -> str:
    return (f"the request body is over the server's limit of {max_bytes / 2**20:g} MB; send "
            "smaller media, or start the server with a larger --max-body-mb")


def install_error_handlers(app: FastAPI):
    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        param = _validation_param(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            param = None
            message = f"the body is not valid JSON ({first.get('msg')}); send a JSON object"
        else:
            message = f"{param or 'body'}: {first.get('msg')}"
        return error_response(400, message, param, first.get("type"))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        if exc.status_code == 413:
            return error_response(413, body_limit_message(request.app.state.omni.max_body),
                                  code="body_too_large")
        return error_response(exc.status_code, str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 429 else None
        return error_response(exc.status, str(exc), exc.param, exc.code, headers)

    @app.exception_handler(QueueFull)
    async def busy(request, exc):
        return await request_error(request, as_request_error(exc))

    @app.exception_handler(ClientGone)
    async def gone(request, exc):
        return error_response(499, "the client disconnected", code="client_disconnected")

    @app.exception_handler(Exception)
    async def failure(request, exc):
        return await request_error(request, as_request_error(exc))


def create_app(model, model_name: str = "omni-edge", *, max_queue: int = DEFAULT_MAX_QUEUE,
               time_limit: float = DEFAULT_TIME_LIMIT_S, max_body_mb: float = DEFAULT_MAX_BODY_MB,
               allow_local_files: bool = False, api_key: Optional[str] = None) -> FastAPI:
    """The server's app over a loaded `model` (`omni_edge.load`); run it with uvicorn."""
    if max_queue < 0 or time_limit <= 0 or max_body_mb <= 0:
        raise ValueError("max_queue must be >= 0, time_limit and max_body_mb > 0")
    worker = Worker(max_queue, time_limit)

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()  # let the running generation end before the process does

    app = FastAPI(title="omni-edge", description="OpenAI-compatible Qwen2.5-Omni server",
                  lifespan=lifespan)
    app.state.omni = ServerState(model, model_name, worker, allow_local_files, api_key)
    app.state.omni.max_body = int(max_body_mb * 2**20)
    app.add_middleware(BodyLimit, max_bytes=app.state.omni.max_body)
    install_error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **worker.status()}

    app.include_router(router, prefix="/v1", dependencies=[Depends(check_key)])
    return app
