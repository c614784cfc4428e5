"""Run transformers 4.57.6's end-to-end Qwen2.5-Omni generate() on a fixture checkpoint.

The release behaviour of the Talker hand-off (transformers 5.x drops the all-ones attention
mask and with it the codec pad/bos embeddings and the rope index; omni_spec.md §0), so the
speech tests use 4.57.6 as the oracle. It lives in its own venv (torch 2.13.0 +
transformers==4.57.6) and is run as a subprocess:

    python omni_457.py REQUEST.json  → prints {"thinker_ids": [...], "codes": [...]} as JSON

REQUEST: {"model": dir, "input_ids": [...], "voice": name, "thinker_tokens": N,
          "talker_tokens": M, "inputs": optional path of an .npz of the processor's other
          outputs (input_features, feature_attention_mask, pixel_values, image_grid_thw, ...),
          "use_audio_in_video": optional bool}
"""

import json
import sys

import numpy as np
import torch
from transformers import Qwen2_5OmniForConditionalGeneration


def main(request_path: str):
    req = json.loads(open(request_path).read())
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(req["model"], torch_dtype=torch.float32).eval()
    captured = {}

    def capture_codes(code, conditioning, reference_mel, **kwargs):
        captured["codes"] = code[0].tolist()
        return torch.zeros(1)

    model.token2wav.forward = capture_codes
    ids = torch.tensor([req["input_ids"]])
    kwargs = {}
    if req.get("inputs"):  # the processor's other outputs: audio features, pixel values, grids
        kwargs = {k: torch.tensor(v) for k, v in np.load(req["inputs"]).items()}
    if req.get("use_audio_in_video"):
        kwargs["use_audio_in_video"] = True
    with torch.no_grad():
        text_ids, _ = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), speaker=req["voice"],
            thinker_max_new_tokens=req["thinker_tokens"], talker_max_new_tokens=req["talker_tokens"],
            talker_do_sample=False, return_audio=True, **kwargs)
    print(json.dumps({"thinker_ids": text_ids[0, ids.shape[1]:].tolist(), "codes": captured["codes"]}))


if __name__ == "__main__":
    main(sys.argv[1])
