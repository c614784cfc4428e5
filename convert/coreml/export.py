"""Hugging Face Qwen2.5-Omni checkpoint -> one Core ML package per component + manifest.json."""

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from ...config import OmniConfig
from ..hub import resolve_model_path
from . import check_backends
from .options import COMPONENTS, ExportOptions, parse_components, parse_ints, parse_sizes, validate


class _Context:
    def __init__(self, src: Path, out: Path, work: Path, options: ExportOptions, config: OmniConfig):
        from transformers import Qwen2_5OmniConfig

        from .weights import CheckpointReader

        self.src, self.out, self.work, self.options, self.config = src, out, work, options, config
        self.reader = CheckpointReader(src)
        self.hf_config = Qwen2_5OmniConfig.from_pretrained(str(src))
        pre = src / "preprocessor_config.json"
        self.preprocessor = ({k: v for k, v in json.loads(pre.read_text()).items()
                              if k in ("image_mean", "image_std", "rescale_factor", "patch_size",
                                       "merge_size", "temporal_patch_size")} if pre.is_file() else None)
        self.dit = None


def export(hf_path: str, out: str, components: Sequence[str] = COMPONENTS, *, force: bool = False,
           revision: Optional[str] = None, **options) -> Path:
    """Export `hf_path` (a directory or hub repo id) to Core ML packages under `out`.

    Written atomically: a hidden sibling directory is renamed into place when complete."""
    opts = ExportOptions(components=parse_components(components), **options)
    opts.audio_batches = parse_ints(opts.audio_batches, "--audio-batches")
    opts.image_sizes = parse_sizes(opts.image_sizes)
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} already exists; pass --force to overwrite it")
    check_backends()
    src = resolve_model_path(hf_path, revision)
    config = OmniConfig.from_file(src / "config.json")
    validate(opts, config)
    if out_dir.exists() and out_dir.resolve() == src.resolve():
        raise ValueError(f"--out {out_dir} is the input checkpoint itself; choose another folder")

    from ..atomic import atomic_dir
    from .components import EXPORTERS, export_voices

    work = Path(tempfile.mkdtemp(prefix="omni-coreml-"))
    try:
        with atomic_dir(out_dir) as tmp:
            ctx = _Context(src, tmp, work, opts, config)
            manifest = {"format": "omni-edge-coreml", "format_version": 1, "source": src.name,
                        "minimum_deployment_target": "iOS18", "options": _options_doc(opts),
                        "components": {}}
            for name in opts.components:
                manifest["components"][name] = EXPORTERS[name](ctx)
            if config.has_speech and ("talker" in opts.components or "dit" in opts.components):
                manifest["speakers"] = export_voices(ctx)
            manifest["tokenizer"] = _copy_tokenizer(src, tmp)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _options_doc(opts: ExportOptions) -> dict:
    doc = asdict(opts)
    doc["image_sizes"] = [f"{h}x{w}" for h, w in opts.image_sizes]
    return doc


def _copy_tokenizer(src: Path, out: Path):
    from ..mlx import TOKENIZER_FILES

    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
            copied.append(name)
    return copied

