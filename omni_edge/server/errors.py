"""OpenAI's error shape, and which failures are the client's (4xx) and which are the server's."""

from typing import Optional

from fastapi.responses import JSONResponse

from ..speech.voice import SpeechError
from .worker import QueueFull, TimeLimit

RETRY_AFTER_S = 5
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
               429: "rate_limit_error", 499: "client_closed_request"}


class RequestError(ValueError):
    """A request that can't be served as sent: an OpenAI error with the field it names."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def error_body(status: int, message: str, param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


def as_request_error(err: BaseException) -> RequestError:
    """The OpenAI error a failed job or request maps to: bad input is a 4xx, a bug a 500."""
    if isinstance(err, RequestError):
        return err
    if isinstance(err, QueueFull):
        return RequestError("the server is busy: its queue is full; retry in a few seconds",
                            None, "queue_full", 429)
    if isinstance(err, TimeLimit):
        return RequestError(str(err), None, "timeout", 408)
    if isinstance(err, SpeechError):
        return RequestError(str(err), "audio", "invalid_audio_request")
    if isinstance(err, (ValueError, FileNotFoundError)):
        return RequestError(str(err), None, "invalid_input")
    return RequestError(f"internal error: {type(err).__name__}: {err}", None, "internal_error", 500)


