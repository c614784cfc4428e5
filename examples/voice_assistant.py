"""Talk to the model: speak, pause, and it answers aloud; talk over it to interrupt.
Needs `pip install "omni-edge[voice]"`. --mic-file FILE listens to a recording instead."""

import argparse

import omni_edge
from omni_edge.voice import listen

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", default="omni-3b-4bit", help="converted dir, HF dir or hub repo id")
parser.add_argument("--mic-file", help="a recording to use as the microphone")
parser.add_argument("--no-play", action="store_true", help="don't play the replies (headless)")
parser.add_argument("--max-tokens", type=int, default=256)
parser.add_argument("--max-codec-tokens", type=int, default=4096, help="speech bound (50 a second)")
args = parser.parse_args()

model = omni_edge.load(args.model)
chat = omni_edge.ChatSession(model, speak=True, voice="Chelsie", max_tokens=args.max_tokens,
                             max_codec_tokens=args.max_codec_tokens)
listen(chat, mic_file=args.mic_file, play=not args.no_play, log="voice-log.jsonl")
for message in chat.messages[1:]:  # the transcript (the system prompt left out)
    said = "".join(p.get("text", f"<{p['type']}>") for p in message["content"])
    print(f"{message['role']}: {said}")
