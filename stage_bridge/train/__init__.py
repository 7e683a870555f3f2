"""Fine-tuning STAGE on multitrack data.

dataset.py (songs, labels, splits, song analysis and `prepare`, pairs), augment.py
(speed/pitch), clicks.py (the click at a song's beats; the beats come from audio.tracking),
trainer.py (loss, context-token parameter, training loop), schedule.py
(the two phases), checkpoint.py (atomic saves, exact resume), run.py (`stage-bridge train`).
Modules are imported where used, so the CLI does not pay for them on every call.
"""
