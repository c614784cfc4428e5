"""The request bodies the server accepts, in OpenAI's shapes (pydantic validates them, so a bad
field is a 400 naming it, never an exception inside generation)."""

from typing import List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..models.solvers import SOLVERS

SOLVER_NAMES = tuple(SOLVERS)
INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
CHAT_AUDIO_FORMATS = ("wav", "flac", "pcm16", "mp3", "opus")
SPEECH_FORMATS = ("wav", "pcm", "flac", "mp3", "opus")


class Lenient(BaseModel):
    """Unknown fields are ignored: clients send options this server has no use for."""

    model_config = ConfigDict(extra="ignore")


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class ImageURL(Lenient):
    url: str = Field(description="a data: URL, or a local path / file:// URL with "
                                 "--allow-local-files")


class ImagePart(Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Lenient):
    data: str = Field(description="the base64 of the encoded file")
    format: Literal[INPUT_AUDIO_FORMATS]


class AudioPart(Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


class VideoURL(Lenient):
    url: str = Field(description="a data:video/...;base64 URL, or a local path with "
                                 "--allow-local-files")
    use_audio_in_video: bool = False


class VideoPart(Lenient):
    type: Literal["video_url"]
    video_url: VideoURL


Part = Union[TextPart, ImagePart, AudioPart, VideoPart]


class AudioRef(Lenient):
    id: str


class Message(Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[Part], None] = None
    audio: Optional[AudioRef] = None  # an earlier spoken reply, by the id the server gave it

    @model_validator(mode="after")
    def _has_content(self):
        if self.content is None and not (self.role == "assistant" and self.audio):
            raise ValueError(f"a {self.role} message needs 'content'")
        return self


class AudioOutput(Lenient):
    voice: str = "Chelsie"
    format: Literal[CHAT_AUDIO_FORMATS] = "wav"


class StreamOptions(Lenient):
    include_usage: bool = False


class SpeechFields(Lenient):
    """The model's own speech options (`jobs.speech_options` maps them onto SpeechOptions)."""

    talker_temperature: float = Field(0.9, ge=0)
    talker_top_k: int = Field(40, ge=0)
    talker_top_p: float = Field(0.8, gt=0, le=1)
    talker_repetition_penalty: float = Field(1.05, gt=0)
    max_codec_tokens: int = Field(4096, ge=1)
    solver: Literal[SOLVER_NAMES] = Field(  # type: ignore[valid-type]
        "reference", description="Token2Wav's ODE solver preset")
    first_chunk_frames: Optional[int] = Field(None, ge=24, multiple_of=24,
                                              description="mel frames in the first audio window")
    overlap: Optional[bool] = Field(None, description="render windows while decoding goes on")


class ChatRequest(SpeechFields):
    model: Optional[str] = None
    messages: List[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    modalities: List[Literal["text", "audio"]] = ["text"]
    audio: Optional[AudioOutput] = None
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    seed: Optional[int] = Field(None, ge=0, lt=2**64)
    stop: Union[str, List[str], None] = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    # the model's own options
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    use_audio_in_video: bool = False
    tools: Optional[list] = Field(None, description="not supported: the model has no tool calling")

    @model_validator(mode="after")
    def _check(self):
        if self.tools:
            raise ValueError("tools (function calling) are not supported by this model; "
                             "send the request without 'tools'")
        if "audio" in self.modalities and self.audio is None:
            self.audio = AudioOutput()
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("'stop' takes at most 4 sequences")
        return self

    @property
    def speak(self) -> bool:
        return "audio" in self.modalities

    @property
    def stops(self) -> List[str]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in stops if s]


class SpeechRequest(SpeechFields):
    model: Optional[str] = None
    input: str = Field(min_length=1, max_length=4096)
    voice: str = "Chelsie"
    response_format: Literal[SPEECH_FORMATS] = "wav"
    stream_format: Literal["audio"] = "audio"
    seed: Optional[int] = Field(None, ge=0, lt=2**64)
