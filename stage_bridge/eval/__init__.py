"""`stage-bridge eval`: the STAGE paper's objective metrics for a model on a multitrack test split.

`metrics` (FAD, KAD), `embedders` (what FAD and KAD compare), `run` (the loop over songs, context
modes and seeds, resumable), `report` (the tables, per-song CSV, plots and settings JSON).
"""
