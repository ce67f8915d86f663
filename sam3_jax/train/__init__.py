"""Training code for sam3_jax: box geometry helpers (`box_ops`), the Hungarian and one-to-many matchers
(`matcher`), the SAM 3 detection / segmentation losses (`losses`) and the sharded train step (`step`).

The losses follow the official `sam3.train` package (matcher.py, loss/loss_fns.py, loss/sam3_loss.py)
on padded, static-shape targets; see `sam3_jax.train.losses` for the target format.
"""
