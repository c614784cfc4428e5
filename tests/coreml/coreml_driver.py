"""Drive an exported decoder package (prefill chunks, then one-token decode steps) through the test
interpreter, as an app would, with the arithmetic of `omni_edge.convert.coreml.runtime`."""

import numpy as np
from mil_interpreter import Interpreter

from omni_edge.convert.coreml.runtime import attention_mask, prefill_layout, rope_tables


def run_decoder(package, embeds, positions, config, prompt_len):
    """embeds [T, E], positions [3, T]; the first `prompt_len` go through `prefill`, the rest one
    by one through `decode`. Returns (logits per step [steps, V], hidden [T, H] or None): step 0
    is the prompt's last token, step k the k-th decoded one."""
    interp = Interpreter(package)
    chunk, context = config["prefill_chunk"], config["context"]
    cos, sin = rope_tables(positions, config["mrope_section"], config["rope_theta"], config["head_dim"])
    chunks, shift, dead = prefill_layout(prompt_len, chunk)
    state = interp.new_state("prefill")
    hidden = np.zeros((len(embeds), config["hidden_size"]), np.float32)
    logits = []

    def call(function, tokens, first_slot):
        real = np.maximum(tokens, 0)
        slots = first_slot + np.arange(len(tokens))
        feeds = {"inputs_embeds": np.where(tokens[:, None] >= 0, embeds[real], 0)[None],
                 "position_cos": cos[:, real], "position_sin": sin[:, real],
                 "attention_mask": attention_mask(slots, context, dead_slots=dead),
                 "cache_offset": np.array([first_slot], np.int32)}
        out = interp.run(feeds, function=function, state=state)
        if "hidden_states" in out:
            hidden[real[tokens >= 0]] = out["hidden_states"][0][tokens >= 0]
        return out["logits"][0, -1]

    for first_slot, tokens in chunks:
        last = call("prefill", tokens, first_slot)
    logits.append(last)
    for i in range(prompt_len, len(embeds)):
        logits.append(call("decode", np.array([i]), i + shift))
    return np.stack(logits), (hidden if "hidden_states_output" in config else None)


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())
