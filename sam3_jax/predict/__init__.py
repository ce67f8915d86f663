"""Inference on images: the image predictor (`predictor`), overlay pictures of its outputs (`overlay`),
the CLI (`python -m sam3_jax.predict`). Preprocessing and mask encodings are in `sam3_jax.formats`."""
