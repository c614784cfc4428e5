"""OpenAI chat messages -> omni-edge messages: base64 audio decoded, image and video URLs
checked (data: URLs always; local files only when the server allows them; never the network)."""

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

from .errors import RequestError
from .schemas import AudioPart, ImagePart, Message, TextPart, VideoPart


def decode_base64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{param} is not valid base64; send the file's bytes base64-encoded",
                           param) from None


def local_file(url: str, param: str, allow: bool) -> str:
    """The path a local path or file:// URL names, when the server may read local files."""
    if url.startswith(("http://", "https://")):
        raise RequestError(f"{param}: http(s) URLs are refused, the server is offline; send the "
                           "file inline as a data: URL", param, "remote_url_refused")
    if not allow:
        raise RequestError(f"{param}: local paths are refused; send a data: URL, or start the "
                           "server with --allow-local-files", param, "local_file_refused")
    path = Path(url[len("file://"):] if url.startswith("file://") else url)
    if not path.is_file():
        raise RequestError(f"{param}: no such file {str(path)!r}", param, "file_not_found")
    return str(path)


def video_source(url: str, param: str, allow: bool, spool: List[str]) -> str:
    """A video's file: a data: URL is written to a temporary file (the decoder reads files),
    whose path is added to `spool` for the caller to remove."""
    if not url.startswith("data:"):
        return local_file(url, param, allow)
    header, sep, data = url.partition(",")
    if not sep or not header.startswith("data:video/") or not header.endswith(";base64"):
        raise RequestError(f"{param}: expected a data URL like 'data:video/mp4;base64,<data>'",
                           param)
    suffix = "." + header[len("data:video/"):-len(";base64")].split(";")[0]
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
        f.write(decode_base64(data, param))
    spool.append(f.name)
    return f.name


def convert_messages(messages: List[Message], allow_local_files: bool,
                     transcript_of: Callable[[str], Optional[str]], spool: List[str]) -> list:
    """The omni-edge messages of an OpenAI conversation. An assistant turn that carries only an
    earlier spoken reply's `audio.id` is given that reply's transcript."""
    out = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        content = m.content
        if content is None:
            content = transcript_of(m.audio.id)
            if content is None:
                raise RequestError(f"messages[{i}].audio.id {m.audio.id!r} is unknown or expired; "
                                   "resend the reply's text as content", f"messages[{i}].audio.id")
        if isinstance(content, str):
            out.append({"role": role, "content": [{"type": "text", "text": content}]})
            continue
        parts = [_part(p, f"messages[{i}].content[{j}]", role, allow_local_files, spool)
                 for j, p in enumerate(content)]
        out.append({"role": role, "content": parts})
    return out


def _part(part, param: str, role: str, allow: bool, spool: List[str]) -> dict:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if role != "user":
        raise RequestError(f"{param}: only user messages may hold audio, images or video", param)
    if isinstance(part, AudioPart):
        data = decode_base64(part.input_audio.data, f"{param}.input_audio.data")
        return {"type": "audio", "audio": data}
    if isinstance(part, ImagePart):
        url = part.image_url.url
        if not url.startswith("data:"):
            url = local_file(url, f"{param}.image_url.url", allow)
        return {"type": "image", "image": url}
    assert isinstance(part, VideoPart)
    video = video_source(part.video_url.url, f"{param}.video_url.url", allow, spool)
    return {"type": "video", "video": video,
            "use_audio_in_video": part.video_url.use_audio_in_video}
