#!/usr/bin/env python
"""Convert official SAM 3 weights to a sam3_jax checkpoint. See `python convert_weights.py --help`."""

from sam3_jax.convert.__main__ import run

if __name__ == "__main__":
    run()
