"""Image and mask formats shared by inference, data and evaluation (below all three of them).

* `image`: the official image preprocessing (torchvision-exact uint8 resize, normalisation).
* `masks`: mask codecs: COCO RLE, uncompressed and compressed, and the checks on RLE strings.
* `scalars`: the checks on JSON numbers the readers of these formats share.

Pure numpy (plus Pillow / pycocotools where named); nothing here imports the rest of sam3_jax.
"""
