"""JAX/Flax port of Meta's SAM 3 (Segment Anything with Concepts)."""
