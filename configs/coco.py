"""Fine-tune SAM 3 on a COCO-format instance data set (category names as noun phrases, absent
categories as negatives), from a converted official checkpoint:

    python convert_weights.py --checkpoint sam3.pt --out /ckpt/sam3_full
    python train.py --config configs/coco.py:full --init_from /ckpt/sam3_full --workdir runs/coco \\
        --config.data.train_annotations=/data/coco/annotations/instances_train2017.json \\
        --config.data.train_images=/data/coco/train2017 \\
        --config.data.val_annotations=/data/coco/annotations/instances_val2017.json \\
        --config.data.val_images=/data/coco/val2017

`:tiny` gives the small parity-test sizes (224 px), for a dry run on a CPU. `--config.data.source=saco`
reads SA-Co/Gold-style files instead, `--config.data.source=tfds` ArrayRecord splits written by
`sam3_jax.data.tfds_builders` (`--config.data.tfds_dir=...`). The optimiser, loss and DAC settings
are the released fine-tuning recipe's.
"""

import ml_collections

from sam3_jax.config import LOGICAL_AXIS_RULES, model_config
from sam3_jax.train.inputs import data_config
from sam3_jax.train.loop import loss_config_dict
from sam3_jax.train.optim import official_defaults


def get_config(arg: str = "full") -> ml_collections.ConfigDict:
    variant = arg or "full"
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config(variant)
    cfg.model.remat = "full" if variant == "full" else "none"
    cfg.data = data_config(source="coco", max_instances=32, max_exemplars=4, train_batch=8, eval_examples=500,
                           num_workers=4 if variant == "full" else 0)
    cfg.optim = ml_collections.ConfigDict(official_defaults())
    cfg.loss = loss_config_dict(use_masks=True, use_semantic_seg=True)  # the released weights
    cfg.train = ml_collections.ConfigDict(dict(
        steps=20_000, max_minutes=0.0, log_every=50, eval_every=2_000, checkpoint_every=1_000, keep=3,
        pictures=8, dac=True,
    ))
    cfg.matmul_precision = "default"
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.logical_axis_rules = LOGICAL_AXIS_RULES
    cfg.seed = 0
    return cfg
