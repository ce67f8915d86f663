#!/usr/bin/env python
"""Entry point for evaluateing (not implemented yet; see README 'What works')."""

import sys

if __name__ == "__main__":
    print("evaluate.py: not implemented yet in sam3_jax (see README.md, 'What works')", file=sys.stderr)
    sys.exit(2)
