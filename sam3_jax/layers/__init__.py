"""Numerics shared by every model file: attention, RoPE, position encodings, norms, convs."""
