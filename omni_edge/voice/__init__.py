"""Talk to the model: the microphone (or a file) in, turn-taking with a VAD, spoken replies
through one output stream, barge-in, echo cancellation and an event log (`omni-edge chat
--listen`)."""

from .cli import add_listen_options, listen, open_audio, run_listen, wants_listen
from .listener import EventLog, Listener
from .turns import Endpointer, SileroVAD, TurnOptions

__all__ = ["listen", "open_audio", "add_listen_options", "run_listen", "wants_listen", "EventLog",
           "Listener", "Endpointer", "SileroVAD", "TurnOptions"]
