"""jdd.data: datasets (tfds and local files), caption JSON, jittable augmentations."""

from jdd.data.captions import (
    CLIP_MEAN,
    CLIP_STD,
    CaptionDataset,
    EvalSplit,
    TrainPairs,
    load_caption_dataset,
    pre_caption,
)
from jdd.data.classification import (
    NORMALIZATION,
    ClassificationData,
    DatasetNotFoundError,
    Split,
    denormalize,
    load_classification,
    normalize,
)
from jdd.data.sources import StreamingSplit
from jdd.data.shapes_captions import ensure_shapes_captions

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CaptionDataset",
    "EvalSplit",
    "TrainPairs",
    "load_caption_dataset",
    "pre_caption",
    "NORMALIZATION",
    "ClassificationData",
    "DatasetNotFoundError",
    "Split",
    "StreamingSplit",
    "denormalize",
    "ensure_shapes_captions",
    "load_classification",
    "normalize",
]
