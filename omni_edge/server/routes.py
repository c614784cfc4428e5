"""OpenAI's routes: models, chat completions (text and speech, whole or streamed as server-sent
events), transcriptions and speech."""

import base64
import json
import logging
import os
import time
import uuid
from typing import Iterator, List, Optional

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from . import jobs
from .audio import MEDIA_TYPES, encode, pcm16, wav_stream_header
from .errors import RequestError, as_request_error, error_body
from .messages import convert_messages
from .schemas import ChatRequest, SpeechRequest

DEFAULT_MAX_TOKENS = 1024
TRANSCRIPT_TOKENS = 448
TRANSCRIPTION_FORMATS = ("json", "text")
STREAMED_SPEECH = ("wav", "pcm")

router = APIRouter()
LOG = logging.getLogger("omni_edge.server")


def _sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _usage(done: jobs.Finished) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}


def _cleanup(events: Iterator, paths: List[str]) -> Iterator:
    """`events`, then the temporary files the request's media were spooled to are removed."""
    try:
        yield from events
    finally:
        _remove(paths)


def _remove(paths: List[str]):
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


@router.get("/models")
async def models(request: Request):
    state = request.app.state.omni
    return {"object": "list", "data": [{"id": state.model_name, "object": "model",
                                        "created": state.created, "owned_by": "omni-edge"}]}


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    state = request.app.state.omni
    if body.speak:
        state.check_voice(body.audio.voice, "audio.voice")
    requested = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
    max_tokens = min(requested, state.context - 1)
    spool: List[str] = []
    try:  # the spooled media files go when the job ends, or here when it never runs
        messages = convert_messages(body.messages, state.allow_local_files, state.transcript_of,
                                    spool)
        work = lambda: _cleanup(  # noqa: E731
            jobs.chat_events(state.model, state.cache, body, messages, max_tokens), spool)
        if body.stream:
            events, first = await state.first_event(work, request)
        else:
            replies = await state.drain(work, request)
    except BaseException:
        _remove(spool)
        raise
    reply_id, audio_id = f"chatcmpl-{uuid.uuid4().hex}", f"audio_{uuid.uuid4().hex}"
    base = {"id": reply_id, "created": int(time.time()), "model": body.model or state.model_name}
    if body.stream:
        return StreamingResponse(_chat_stream(state, body, events, first, base, audio_id),
                                 media_type="text/event-stream")
    done = replies[-1]
    audio = [e.audio for e in replies if e.type == "audio"]
    message = {"role": "assistant", "content": done.text}
    if body.speak:
        wav = np.concatenate(audio) if audio else np.zeros(0, np.float32)
        message = {"role": "assistant", "content": None, "audio": {
            "id": audio_id, "data": base64.b64encode(encode(wav, body.audio.format)).decode(),
            "transcript": done.text, "expires_at": state.remember(audio_id, done.text)}}
    return {**base, "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason}],
            "usage": _usage(done)}


async def _chat_stream(state, body: ChatRequest, events, first, base: dict, audio_id: str):
    def chunk(delta: dict, finish: Optional[str] = None) -> str:
        return _sse({**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    try:
        yield chunk({"role": "assistant", "content": None if body.speak else ""})
        event = first
        while event is not None:
            if event.type == "text":
                yield chunk({"audio": {"id": audio_id, "transcript": event.text}} if body.speak
                            else {"content": event.text})
            elif event.type == "audio":
                data = base64.b64encode(pcm16(event.audio)).decode()
                yield chunk({"audio": {"id": audio_id, "data": data}})
            else:
                tail = {}
                if body.speak:
                    tail = {"audio": {"id": audio_id,
                                      "expires_at": state.remember(audio_id, event.text)}}
                yield chunk(tail, event.finish_reason)
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({**base, "object": "chat.completion.chunk", "choices": [],
                                "usage": _usage(event)})
            event = await anext(events, None)
        yield _sse("[DONE]")
    except Exception as err:  # headers are out: the error goes in the stream, then it ends
        error = as_request_error(err)
        yield _sse(error_body(error.status, str(error), error.param, error.code))


@router.post("/audio/speech")
async def speech(body: SpeechRequest, request: Request):
    state = request.app.state.omni
    state.check_voice(body.voice, "voice")
    work = lambda: jobs.speech_events(state.model, body)  # noqa: E731
    media_type = MEDIA_TYPES[body.response_format]
    if body.response_format in STREAMED_SPEECH:
        events, first = await state.first_event(work, request)
        return StreamingResponse(_speech_stream(body.response_format, events, first),
                                 media_type=media_type)
    audio = [e.audio for e in await state.drain(work, request) if e.type == "audio"]
    wav = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    return Response(encode(wav, body.response_format), media_type=media_type)


async def _speech_stream(fmt: str, events, first):
    if fmt == "wav":
        yield wav_stream_header()
    event = first
    try:
        while event is not None:
            if event.type == "audio":
                yield pcm16(event.audio)
            event = await anext(events, None)
    except Exception as err:  # the headers are out and raw audio has no error frame: end short
        LOG.warning("speech stream ended early: %s", as_request_error(err))


@router.post("/audio/transcriptions")
async def transcriptions(request: Request, file: UploadFile = File(...),
                         model: Optional[str] = Form(None), language: Optional[str] = Form(None),
                         prompt: Optional[str] = Form(None),
                         response_format: str = Form("json"), temperature: float = Form(0.0)):
    state = request.app.state.omni
    if response_format not in TRANSCRIPTION_FORMATS:
        raise RequestError(f"response_format {response_format!r} is not supported; use one of "
                           f"{', '.join(TRANSCRIPTION_FORMATS)}", "response_format")
    if not 0 <= temperature <= 2:
        raise RequestError(f"temperature must be in [0, 2], got {temperature}", "temperature")
    audio = await file.read()
    if not audio:
        raise RequestError("the uploaded file is empty; send an audio file", "file")
    work = lambda: jobs.transcription_events(state.model, audio, language, prompt,  # noqa: E731
                                             temperature, TRANSCRIPT_TOKENS)
    done = (await state.drain(work, request))[-1]
    text = done.text.strip()
    if response_format == "text":
        return PlainTextResponse(text)
    return JSONResponse({"text": text})
