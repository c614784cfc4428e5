"""What the routes share: the model, the worker, the prompt cache, the server's options."""

import secrets
import time
from collections import OrderedDict
from typing import Optional

from fastapi import Request

from .cache import PromptCache
from .errors import RequestError, as_request_error
from .worker import ClientGone, Worker

TRANSCRIPTS_KEPT = 256  # spoken replies a client may refer back to by audio id
AUDIO_EXPIRY_S = 3600


class ServerState:
    """What the routes share: the model, its name, the worker, the prompt cache, the options."""

    def __init__(self, model, model_name: str, worker: Worker, allow_local_files: bool,
                 api_key: Optional[str]):
        self.model, self.model_name, self.worker = model, model_name, worker
        self.allow_local_files, self.api_key = allow_local_files, api_key
        self.cache = PromptCache(model)
        self.created = int(time.time())
        self.transcripts: "OrderedDict[str, tuple]" = OrderedDict()

    @property
    def context(self) -> int:
        return self.model.config.thinker_config.text_config.max_position_embeddings

    def check_voice(self, voice: str, param: str):
        if getattr(self.model, "talker", None) is None:
            raise RequestError("this model has no Talker, so it cannot speak; serve a full "
                               "Qwen2.5-Omni checkpoint", param, "speech_unavailable")
        if voice not in self.model.voices:
            raise RequestError(f"unknown voice {voice!r}; this model has: "
                               f"{', '.join(self.model.voices)}", param, "unknown_voice")

    def remember(self, audio_id: str, transcript: str) -> int:
        expires = int(time.time()) + AUDIO_EXPIRY_S
        self.transcripts[audio_id] = (transcript, expires)
        while len(self.transcripts) > TRANSCRIPTS_KEPT:
            self.transcripts.popitem(last=False)
        return expires

    def transcript_of(self, audio_id: str) -> Optional[str]:
        transcript, expires = self.transcripts.get(audio_id, (None, 0))
        return transcript if expires > time.time() else None

    async def first_event(self, work, request: Request):
        """Queue `work` and wait for its first event, so bad input is refused before any byte
        of the reply is sent. Returns (the job's events, the first event or None)."""
        try:
            events = self.worker.submit(work).events(request)
            return events, await anext(events, None)
        except (RequestError, ClientGone):
            raise
        except Exception as err:
            raise as_request_error(err) from err

    async def drain(self, work, request: Request) -> list:
        """All the events of `work`, queued and run; failures as RequestError."""
        events, first = await self.first_event(work, request)
        out = [first] if first is not None else []
        try:
            async for event in events:
                out.append(event)
        except (RequestError, ClientGone):
            raise
        except Exception as err:
            raise as_request_error(err) from err
        return out


def check_key(request: Request):
    key = request.app.state.omni.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise RequestError("missing or wrong API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key", 401)


