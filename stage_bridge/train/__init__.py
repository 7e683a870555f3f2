"""Fine-tuning STAGE on multitrack data.

dataset.py (songs, splits, pairs, token cache), augment.py (speed/pitch), beats.py (beat
tracking, clicks), trainer.py (loss, context-token parameter, training loop), schedule.py
(the two phases), checkpoint.py (atomic saves, exact resume), run.py (`stage-bridge train`).
Modules are imported where used, so the CLI does not pay for them on every call.
"""
