"""Data: real image sources, the webdataset shard writer, and the LightningDataModule that streams shards."""

from .datamodule import SampleError, ShardDataModule
from .manifest import Manifest, ShardError
from .shards import write_shards
from .sources import SourceError, idx_dataset, image_folder, sklearn_digits

__all__ = [
    "Manifest",
    "SampleError",
    "ShardDataModule",
    "ShardError",
    "SourceError",
    "idx_dataset",
    "image_folder",
    "sklearn_digits",
    "write_shards",
]
