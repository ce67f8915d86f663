"""Training / evaluation data for sam3_jax.

* `synthetic`: procedural concept-segmentation images (`SyntheticSource`) and clips
  (`SyntheticVideoSource`), deterministic in (seed, split, index), with held-out colour-shape phrases.
* `coco`: `CocoSource` (COCO-format instances, categories as phrases, absent categories as negatives),
  `SacoGoldSource` (SA-Co/Gold pairs), `write_saco_gold`, `DataError` and the `on_bad_data` switch.
* `tfds_builders`: TFDS builders writing pairs to ArrayRecord without TensorFlow, `TfdsPairSource`
  to read them (imports tensorflow_datasets; not imported here).
* `pipeline`: the Grain pipeline (`PipelineConfig`, `make_iterator`, `to_model_batch`).

Every source returns the same example dict (documented in `sam3_jax.data.synthetic`), one
(image, noun phrase) pair per index; the pipeline resizes to the model resolution and batches.
"""

from sam3_jax.data.coco import BAD_DATA_MODES, CocoSource, DataError, SacoGoldSource, load_rgb, write_saco_gold
from sam3_jax.data.pipeline import (
    BATCH_KEYS,
    PipelineConfig,
    close_iterator,
    enable_worker_processes,
    make_dataset,
    make_iterator,
    to_model_batch,
)
from sam3_jax.data.synthetic import DEFAULT_HELD_OUT, SyntheticSource, SyntheticVideoSource

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
