"""jdd.data: datasets (tfds and local files), caption JSON, jittable augmentations."""

from jdd.data.classification import (
    NORMALIZATION,
    ClassificationData,
    DatasetNotFoundError,
    Split,
    StreamingSplit,
    denormalize,
    load_classification,
    normalize,
)

__all__ = [
    "NORMALIZATION",
    "ClassificationData",
    "DatasetNotFoundError",
    "Split",
    "StreamingSplit",
    "denormalize",
    "load_classification",
    "normalize",
]
