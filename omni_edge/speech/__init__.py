"""Speech out: the voice and system-prompt checks (`voice`), the Talker and its lockstep with the
Thinker (`talker`), and what a listener hears of the streamed audio (`timeline`). Token2Wav's
streaming windows are `omni_edge.streaming`."""
