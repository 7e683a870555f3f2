"""Fine-tuning STAGE on multitrack data: song discovery, splits, pair construction, augmentation.

The trainer lives in `stage_bridge.train.trainer`; this package's data half is torch-Dataset
based and knows nothing about optimisation.
"""

from stage_bridge.train.augment import SPEED_GRID, Augmentation, stretch
from stage_bridge.train.beats import click_at, track_beats
from stage_bridge.train.dataset import (
    DatasetError,
    SongSource,
    StemPairDataset,
    TrainExample,
    describe,
    discover_songs,
    read_split,
    split_songs,
    write_split,
)

__all__ = [
    "SPEED_GRID",
    "Augmentation",
    "DatasetError",
    "SongSource",
    "StemPairDataset",
    "TrainExample",
    "click_at",
    "describe",
    "discover_songs",
    "read_split",
    "split_songs",
    "stretch",
    "track_beats",
    "write_split",
]
