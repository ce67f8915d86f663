#!/usr/bin/env python
"""Score SA-Co predictions, or run the image or video predictor over a set and score it.

    evaluate.py --predictions preds.json --gt gold_a.json [--gt gold_b.json --gt gold_c.json] --out OUT/
    evaluate.py --predictions veval_preds.json --gt veval_gt.json --out OUT/         # video: cgF1 + pHOTA
    evaluate.py --checkpoint CONVERTED/ --gt gt.json --images IMAGE_DIR/ --out OUT/  # predict, then score
    evaluate.py --checkpoint CONVERTED/ --gt veval_gt.json --videos FRAME_ROOT/ --out OUT/   # video too

Image metrics: cgF1, IL_MCC, positive micro F1 (equal to the official sam3/eval/cgf1_eval.py) and
COCO AP; video metrics: video cgF1 and pHOTA. Prints a table; with --out writes report.json,
report.png (and predictions.json in checkpoint mode). Exit status 1 on bad input.
"""

from absl import flags

import sam3_jax.eval.__main__ as _cli

flags.adopt_module_key_flags(_cli)

if __name__ == "__main__":
    _cli.run()
