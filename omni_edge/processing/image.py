"""Image input for Qwen2.5-Omni: load → RGB → smart resize → normalize → patches.

Reproduces the reference pipeline, qwen-omni-utils' `fetch_image` followed by the image processor
that `Qwen2_5OmniProcessor` calls (`Qwen2VLImageProcessor`, PIL backend), with numpy and Pillow
only.  The result is the `pixel_values` [N, 1176] and `image_grid_thw` the vision encoder reads.
`patchify` (the encoder's patch order) and the `VisionInput` result are shared with `video.py`.
"""

import base64
import binascii
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

PATCH_SIZE = 14
MERGE_SIZE = 2  # 2x2 patches become one Thinker token
TEMPORAL_PATCH_SIZE = 2  # frames per patch; a still image is repeated once
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: resized sides are multiples of this
IMAGE_MIN_TOKENS = 4  # default pixel limits, in FACTOR x FACTOR tiles
IMAGE_MAX_TOKENS = 16384
IMAGE_MIN_PIXELS = IMAGE_MIN_TOKENS * FACTOR * FACTOR  # 3136, qwen-omni-utils' and the processor's
IMAGE_MAX_PIXELS = IMAGE_MAX_TOKENS * FACTOR * FACTOR  # 12_845_056
MAX_ASPECT_RATIO = 200
RESCALE_FACTOR = 1 / 255
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_DIM = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176
IMAGE_OPTIONS = ("min_pixels", "max_pixels", "resized_height", "resized_width")

ImageSource = Union[str, Path, bytes, bytearray, memoryview, np.ndarray, Image.Image]


class VisionError(ValueError):
    """An image or video input that cannot be used; the message names the input and the fix."""


@dataclass(frozen=True)
class VisionInput:
    """What the vision encoder reads for one image or video."""

    pixel_values: np.ndarray  # float32 [grid_t * grid_h * grid_w, 1176]
    grid_thw: Tuple[int, int, int]  # patches along time, height, width
    second_per_grid: Optional[float] = None  # videos: seconds covered by one temporal patch

    @property
    def num_tokens(self) -> int:
        """Placeholder tokens in the prompt (one per 2x2 merged patch group)."""
        t, h, w = self.grid_thw
        return t * h * w // (MERGE_SIZE * MERGE_SIZE)


def smart_resize(height: int, width: int, min_pixels: Optional[float] = None,
                 max_pixels: Optional[float] = None, name: str = "image",
                 factor: int = FACTOR) -> Tuple[int, int]:
    """The (height, width) qwen-omni-utils resizes to: sides rounded to multiples of `factor`,
    then scaled (keeping the aspect ratio) into [min_pixels, max_pixels] (by default 4 and 16384
    factor x factor tiles)."""
    min_pixels = IMAGE_MIN_TOKENS * factor * factor if min_pixels is None else min_pixels
    max_pixels = IMAGE_MAX_TOKENS * factor * factor if max_pixels is None else max_pixels
    if min(height, width) <= 0:
        raise VisionError(f"{name} is {width}x{height} pixels; pass a non-empty image")
    if max_pixels < min_pixels:
        raise VisionError(f"{name}: max_pixels ({max_pixels}) is below min_pixels ({min_pixels}); "
                          "raise max_pixels or lower min_pixels")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise VisionError(f"{name} is {width}x{height} pixels, an aspect ratio of {ratio:.0f}; "
                          f"Qwen2.5-Omni accepts at most {MAX_ASPECT_RATIO}: crop or pad it first")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if min(h_bar, w_bar) == 0:
        raise VisionError(f"{name} ({width}x{height}) shrinks below {factor} pixels on its short "
                          f"side under max_pixels={max_pixels}; raise max_pixels or crop the image")
    return h_bar, w_bar


def load_image(source: ImageSource, min_pixels: Optional[float] = None,
               max_pixels: Optional[float] = None, resized_height: Optional[int] = None,
               resized_width: Optional[int] = None, *, factor: int = FACTOR) -> Image.Image:
    """`source` as an RGB PIL image at its model size, like qwen-omni-utils' `fetch_image`.

    `source` is a path (or `file://` path), a `data:image/...;base64,` URL, encoded image bytes, a
    PIL image, or a numpy array [H, W], [H, W, 1|3|4] of uint8 (or floats in [0, 1]).  http(s)
    URLs are refused: nothing is downloaded.  Transparency of any kind is composited on white
    (qwen-omni-utils does it for RGBA only and drops the alpha of LA / P images; the HF processor
    composites them all).  The image is resized (bicubic) to `smart_resize` of its size, or of
    (resized_height, resized_width) when both are given.
    """
    name = describe(source, "image")
    image = to_rgb(open_image(source, name))
    width, height = image.size
    if (resized_height is None) != (resized_width is None):
        raise VisionError(f"{name}: pass both resized_height and resized_width, or neither")
    if resized_height is not None:
        size = smart_resize(_positive(resized_height, "resized_height", name),
                            _positive(resized_width, "resized_width", name),
                            name=name, factor=factor)
    else:
        size = smart_resize(height, width, _pixels(min_pixels, "min_pixels", name),
                            _pixels(max_pixels, "max_pixels", name), name, factor)
    return resize_image(image, size)


def process_image(source: ImageSource, **options) -> VisionInput:
    """Pixel values and grid of one image, equal to `Qwen2_5OmniProcessor(images=...)` applied to
    qwen-omni-utils' `fetch_image` output.  `options` are those of `load_image` (IMAGE_OPTIONS)."""
    unknown = set(options) - set(IMAGE_OPTIONS)
    if unknown:
        raise VisionError(f"{describe(source, 'image')}: unknown option(s) {sorted(unknown)}; use "
                          f"{IMAGE_OPTIONS}")
    image = load_image(source, **options)
    # the processor runs smart_resize again with its own (equal) defaults: a no-op unless the
    # caller's min/max pixels or resized size fall outside them
    width, height = image.size
    image = resize_image(image, smart_resize(height, width, name=describe(source, "image")))
    frames = rescale(np.asarray(image))[None].transpose(0, 3, 1, 2)  # (1, C, H, W)
    pixel_values, grid = patchify(normalize_frames(frames))
    return VisionInput(pixel_values, grid)


def resize_image(image: Image.Image, size: Tuple[int, int]) -> Image.Image:
    height, width = size
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def rescale(pixels: np.ndarray) -> np.ndarray:
    """uint8 → float32 in [0, 1], rounded as the processor does (through float64)."""
    return (pixels.astype(np.float64) * RESCALE_FACTOR).astype(np.float32)


def normalize_frames(frames: np.ndarray) -> np.ndarray:
    """(x - mean) / std per channel of float32 frames [T, C, H, W] already scaled to [0, 1]."""
    mean = np.array(CLIP_MEAN, np.float32)[:, None, None]
    std = np.array(CLIP_STD, np.float32)[:, None, None]
    return (frames - mean) / std


def patchify(frames: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Frames [T, C, H, W] → patches [gt·gh·gw, C·2·14·14] in the encoder's order.

    T is padded to a multiple of 2 by repeating the last frame.  Patches run over time, then
    2x2 merge groups row by row, each group's four patches together; a patch vector is ordered
    (channel, frame, row, column).
    """
    pad = -len(frames) % TEMPORAL_PATCH_SIZE
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    t, c, h, w = frames.shape
    gt, gh, gw = t // TEMPORAL_PATCH_SIZE, h // PATCH_SIZE, w // PATCH_SIZE
    assert gh % MERGE_SIZE == 0 and gw % MERGE_SIZE == 0, (h, w)
    x = frames.reshape(gt, TEMPORAL_PATCH_SIZE, c, gh // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE,
                       gw // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/2, gw/2, 2, 2, C, tp, 14, 14)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * TEMPORAL_PATCH_SIZE * PATCH_SIZE ** 2),
                                dtype=np.float32), (gt, gh, gw)


def describe(source, kind: str) -> str:
    if isinstance(source, Path) or (isinstance(source, str) and not source.startswith("data:")):
        return f"{kind} {str(source)!r}"
    if isinstance(source, str):
        return f"{kind} <data URL, {len(source)} characters>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{kind} <bytes, {memoryview(source).nbytes} bytes>"
    if isinstance(source, np.ndarray):
        return f"{kind} <array shape {source.shape} dtype {source.dtype}>"
    if isinstance(source, Image.Image):
        return f"{kind} <PIL {source.mode} image {source.size[0]}x{source.size[1]}>"
    if isinstance(source, (list, tuple)):
        return f"{kind} <list of {len(source)} frames>"
    return f"{kind} of type {type(source).__name__}"


def local_path(source: Union[str, Path], name: str) -> Path:
    """The file a path or `file://` URL names; http(s) URLs and missing files are refused."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        raise VisionError(f"{name}: URLs are not fetched (omni-edge works offline); download the "
                          "file and pass its path")
    path = Path(text[len("file://"):] if text.startswith("file://") else text)
    if not path.exists():
        raise FileNotFoundError(f"{name} does not exist; check the path")
    if not path.is_file():
        raise VisionError(f"{name} is not a file; pass the path of an image or video file")
    return path


def open_image(source: ImageSource, name: str) -> Image.Image:
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _array_to_image(source, name)
    elif isinstance(source, str) and source.startswith("data:"):
        image = _decode(io.BytesIO(_data_url_bytes(source, name)), name)
    elif isinstance(source, (str, Path)):
        image = _decode(local_path(source, name), name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _decode(io.BytesIO(bytes(source)), name)
    else:
        raise VisionError(f"{name}: pass a path, a data: URL, encoded image bytes, a PIL image or "
                          "a numpy array")
    if min(image.size) == 0:
        raise VisionError(f"{name} is {image.size[0]}x{image.size[1]} pixels; pass a non-empty "
                          "image")
    return image


def _decode(handle, name: str) -> Image.Image:
    try:
        with Image.open(handle) as image:
            image.load()  # decode now so truncated files fail here, not later
            return image.copy()
    except Image.DecompressionBombError as err:
        raise VisionError(f"{name} is too large to decode safely ({err}); downscale it "
                          "first") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise VisionError(f"{name} could not be decoded ({err}); it is corrupt, truncated or not "
                          "an image Pillow reads (png, jpeg, webp, gif, bmp, tiff ...); re-save "
                          "it, e.g. as png") from err


def _data_url_bytes(url: str, name: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image") or not header.endswith(";base64"):
        raise VisionError(f"{name}: expected a data URL like 'data:image/png;base64,<data>'")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise VisionError(f"{name}: the base64 payload is invalid ({err}); re-encode the "
                          "file") from err


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise VisionError(f"{name}: expected [H, W] or [H, W, C] with C in 1, 3, 4 (channels "
                          "last); move the channel axis, e.g. `np.moveaxis(x, 0, -1)`")
    if min(array.shape[:2]) == 0:
        raise VisionError(f"{name} has no pixels; pass a non-empty image")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise VisionError(f"{name}: float pixels must lie in [0, 1]; for 0..255 values pass "
                              "`x.astype(np.uint8)`")
        array = np.round(array * 255)
    elif array.dtype != np.uint8:
        raise VisionError(f"{name}: pixels must be uint8 or floats in [0, 1]; convert the array")
    return Image.fromarray(array.astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; any transparency is composited on white (qwen-omni-utils' RGBA paste)."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _positive(value, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise VisionError(f"{name}: {what} must be a positive integer, got {value!r}")
    return int(value)


def _pixels(value, what: str, name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
        raise VisionError(f"{name}: {what} must be a positive number of pixels, got {value!r}")
    return value
