"""Parity against the official PyTorch SAM 3 (`sam3==0.1.4`, installed with the `parity` extra).

`oracle` builds the official modules at any config on a CPU, offline, with random weights plus
per-tensor noise; `run` converts them, runs both frameworks on the same input and compares stage by
stage; `python -m sam3_jax.parity` is the user-facing command.
"""
