"""Inference on images: preprocessing, the image predictor, post-processing, the CLI."""
