"""Model components of sam3_jax."""
