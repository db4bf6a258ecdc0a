"""Datasets as in-memory uint8 arrays (or image folders) yielding ``(x, y, index)`` batches.

``DATASETS.get(name).build(params)`` returns a :class:`DataBundle`; ``iterate_batches`` turns
a source and row indices into batches on the device, augmented there.
"""

from __future__ import annotations

from advtrain.data.batches import augment_batch, iterate_batches
from advtrain.data.bundle import DataBundle, split_validation
from advtrain.data.datasets import DATASETS, LoaderParams
from advtrain.data.source import ArraySource, FolderSource

__all__ = ["DATASETS", "ArraySource", "DataBundle", "FolderSource", "LoaderParams", "augment_batch",
           "iterate_batches", "split_validation"]
