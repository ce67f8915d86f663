"""Training / evaluation data for sam3_jax.

* `synthetic`: procedural concept-segmentation images (`SyntheticSource`), deterministic in
  (seed, split, index), with held-out colour-shape phrases; `synthetic_video`: clips of the same
  objects in motion (`SyntheticVideoSource`).
* `coco`: `CocoSource` (COCO-format instances, categories as phrases, absent categories as negatives).
* `saco`: `SacoGoldSource` (SA-Co/Gold pairs) and `write_saco_gold` (examples -> a Gold file).
* `records`: what those file sources share: `DataError`, the `on_bad_data` switch, image reading,
  the padded example dict.
* `tfds_builders`: TFDS builders writing pairs to ArrayRecord without TensorFlow, `TfdsPairSource`
  to read them (imports tensorflow_datasets; not imported here).
* `transforms`: the per-example resize and augmentation (`transform_example`, `ResizeAugment`).
* `pipeline`: the Grain pipeline (`PipelineConfig`, `make_iterator`, `to_model_batch`).

Every source returns the same example dict (documented in `sam3_jax.data.synthetic`), one
(image, noun phrase) pair per index; the pipeline resizes to the model resolution and batches.
"""

from sam3_jax.data.coco import CocoSource
from sam3_jax.data.records import BAD_DATA_MODES, DataError, load_rgb
from sam3_jax.data.saco import SacoGoldSource, write_saco_gold
from sam3_jax.data.pipeline import (
    BATCH_KEYS,
    PipelineConfig,
    close_iterator,
    enable_worker_processes,
    make_dataset,
    make_iterator,
    to_model_batch,
)
from sam3_jax.data.synthetic import DEFAULT_HELD_OUT, SyntheticSource
from sam3_jax.data.synthetic_video import SyntheticVideoSource

__all__ = [
    "BAD_DATA_MODES",
    "BATCH_KEYS",
    "CocoSource",
    "DataError",
    "DEFAULT_HELD_OUT",
    "PipelineConfig",
    "SacoGoldSource",
    "SyntheticSource",
    "SyntheticVideoSource",
    "close_iterator",
    "enable_worker_processes",
    "load_rgb",
    "make_dataset",
    "make_iterator",
    "to_model_batch",
    "write_saco_gold",
]
