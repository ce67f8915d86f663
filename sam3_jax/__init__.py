"""sam3_jax: a faithful JAX/Flax reimplementation of Meta's SAM 3 (Segment Anything with Concepts)."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy, so `import sam3_jax` stays light
    if name == "Sam3ImagePredictor":
        from sam3_jax.predict.predictor import Sam3ImagePredictor

        return Sam3ImagePredictor
    raise AttributeError(f"module 'sam3_jax' has no attribute {name!r}")


__all__ = ["Sam3ImagePredictor", "__version__"]
