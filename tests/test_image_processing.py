"""Image input: pixel values and grids against transformers' Qwen2-VL image processor (PIL
backend, the one `Qwen2_5OmniProcessor` runs) and against qwen-omni-utils' `fetch_image` followed
by that processor (the full reference pipeline), plus input forms and error paths."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from omni_edge.processing.image import (VisionError, VisionInput, load_image, process_image,
                                        smart_resize)

# Qwen2.5-Omni's published preprocessor_config.json
MIN_PIXELS, MAX_PIXELS = 3136, 12845056
TOLERANCE = 1e-6


def random_image(height, width, mode="RGB", seed=0):
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def hf_processor(**sizes):
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None)
    if cls is None:
        pytest.skip("this transformers has no PIL-backend Qwen2-VL image processor")
    return cls(min_pixels=sizes.get("min_pixels", MIN_PIXELS),
               max_pixels=sizes.get("max_pixels", MAX_PIXELS))


def reference(image, processor):
    out = processor(images=[image], return_tensors="np")
    return out["pixel_values"], tuple(int(v) for v in out["image_grid_thw"][0])


def assert_same(ours: VisionInput, ref):
    pixel_values, grid = ref
    assert ours.grid_thw == grid
    assert ours.pixel_values.dtype == np.float32 and ours.pixel_values.shape == pixel_values.shape
    assert np.abs(ours.pixel_values - pixel_values).max() <= TOLERANCE
    assert ours.num_tokens == np.prod(grid) // 4 == len(pixel_values) // 4


@pytest.mark.parametrize("height, width", [(30, 40), (448, 448), (1000, 300), (300, 1000), (1, 1),
                                           (57, 1700)])
def test_rgb_matches_processor(height, width):
    image = random_image(height, width)
    assert_same(process_image(image), reference(image, hf_processor()))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA"])
def test_other_modes_match_processor(mode):
    # the processor composites transparency on white, as we do (qwen-omni-utils drops LA's alpha)
    image = random_image(70, 90, mode, seed=1)
    assert_same(process_image(image), reference(image, hf_processor()))


def test_palette_transparency_matches_processor():
    image = random_image(64, 80, "RGBA", seed=2).convert("P")
    image.info["transparency"] = 7
    assert_same(process_image(image), reference(image, hf_processor()))


def test_lowered_max_pixels_matches_processor():
    image = random_image(600, 800, seed=3)
    ours = process_image(image, max_pixels=28 * 28 * 100)
    assert np.prod(ours.grid_thw) * 14 * 14 <= 28 * 28 * 100
    assert_same(ours, reference(image, hf_processor(max_pixels=28 * 28 * 100)))


def test_raised_min_pixels_matches_processor():
    image = random_image(60, 80, seed=4)
    assert_same(process_image(image, min_pixels=28 * 28 * 50),
                reference(image, hf_processor(min_pixels=28 * 28 * 50)))


@pytest.fixture(scope="module")
def fetch_image():
    pytest.importorskip("torchvision")
    return pytest.importorskip("qwen_omni_utils.v2_5.vision_process").fetch_image


@pytest.mark.parametrize("height, width, options", [
    (30, 40, {}), (3, 500, {}), (1, 150, {}), (1000, 300, {}),
    (600, 800, {"max_pixels": 28 * 28 * 100}),
    (20, 30, {"min_pixels": 784, "max_pixels": 784}),  # the processor upsizes it again
    (200, 300, {"resized_height": 100, "resized_width": 250}),
])
def test_matches_qwen_omni_utils_then_processor(fetch_image, height, width, options):
    image = random_image(height, width, seed=height)
    ref = reference(fetch_image({"image": image, **options}), hf_processor())
    assert_same(process_image(image, **options), ref)


def test_rgba_matches_qwen_omni_utils(fetch_image):
    image = random_image(90, 120, "RGBA", seed=5)
    fetched = fetch_image({"image": image})
    assert np.array_equal(np.asarray(load_image(image)), np.asarray(fetched))


def test_input_forms_agree(tmp_path):
    image = random_image(50, 70, seed=6)
    expected = process_image(image)
    png = io.BytesIO()
    image.save(png, format="PNG")
    path = tmp_path / "image.png"
    path.write_bytes(png.getvalue())
    pixels = np.asarray(image)
    sources = [str(path), path, f"file://{path}", png.getvalue(), pixels,
               f"data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}",
               pixels.astype(np.float32) / 255]
    for source in sources:
        got = process_image(source)
        assert got.grid_thw == expected.grid_thw
        assert np.array_equal(got.pixel_values, expected.pixel_values), type(source)
    gray = pixels[..., 0]
    for source in (gray, gray[..., None]):
        assert np.array_equal(process_image(source).pixel_values,
                              process_image(Image.fromarray(gray, "L")).pixel_values)


def test_inputs_change_the_output():
    a, b = process_image(random_image(56, 56, seed=7)), process_image(random_image(56, 56, seed=8))
    assert a.grid_thw == b.grid_thw and not np.allclose(a.pixel_values, b.pixel_values)


def test_smart_resize_rules():
    assert smart_resize(30, 40) == (56, 84)  # below min: scaled up, ceil to 28
    assert smart_resize(448, 448) == (448, 448)
    height, width = smart_resize(4000, 3000, max_pixels=28 * 28 * 100)
    assert height % 28 == width % 28 == 0 and height * width <= 28 * 28 * 100
    assert smart_resize(3, 500) == (28, 504)  # a side never rounds to 0


def test_corrupt_and_truncated_files(tmp_path):
    png = io.BytesIO()
    random_image(64, 64, seed=9).save(png, format="PNG")
    cases = {"garbage.png": b"not an image at all", "truncated.png": png.getvalue()[:200]}
    for filename, data in cases.items():
        (tmp_path / filename).write_bytes(data)
        with pytest.raises(VisionError, match=f"{filename}.*could not be decoded.*re-save"):
            process_image(tmp_path / filename)
    with pytest.raises(VisionError, match="bytes.*could not be decoded"):
        process_image(b"\x89PNG garbage")


def test_missing_file_and_urls(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png.*does not exist"):
        process_image(tmp_path / "nope.png")
    with pytest.raises(VisionError, match="not fetched.*download"):
        process_image("https://example.com/cat.png")
    with pytest.raises(VisionError, match="not a file"):
        process_image(tmp_path)
    with pytest.raises(VisionError, match="base64 payload is invalid"):
        process_image("data:image/png;base64,@@@")
    with pytest.raises(VisionError, match="data URL like"):
        process_image("data:text/plain,hello")


def test_bad_sizes_and_arrays():
    with pytest.raises(VisionError, match="aspect ratio of 300.*crop or pad"):
        process_image(random_image(1, 300))
    with pytest.raises(VisionError, match="non-empty|no pixels"):
        process_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(VisionError, match="channels last.*moveaxis"):
        process_image(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(VisionError, match=r"\[0, 1\].*uint8"):
        process_image(np.full((8, 8, 3), 200.0, np.float32))
    with pytest.raises(VisionError, match="uint8 or floats"):
        process_image(np.zeros((8, 8, 3), np.int64))
    with pytest.raises(VisionError, match="max_pixels.*below min_pixels"):
        process_image(random_image(32, 32), min_pixels=5000, max_pixels=4000)
    with pytest.raises(VisionError, match="both resized_height and resized_width"):
        process_image(random_image(32, 32), resized_height=56)
    with pytest.raises(VisionError, match="pass a path"):
        process_image(12345)
    with pytest.raises(VisionError, match="unknown option.*'fps'"):
        process_image(random_image(32, 32), fps=2.0)
