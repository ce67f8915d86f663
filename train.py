#!/usr/bin/env python
"""Train SAM 3. `python train.py` trains the small default (configs/synthetic.py) on the built-in
synthetic data on a CPU, evaluates it and writes pictures; see `python train.py --help`.

    python train.py [--config configs/NAME.py[:arg]] [--config.x=y] [--workdir DIR] [--init_from CONVERTED_DIR]
"""

from sam3_jax.train.__main__ import run

if __name__ == "__main__":
    run()
