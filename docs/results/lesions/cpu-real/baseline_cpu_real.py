"""The lung-threshold and no-lesion baselines on the cpu-real split (the same code path as seg_unit)."""
import json
import sys

import numpy as np

from detectlab.core.config import load_config
from detectlab.lesions import baseline
from detectlab.lesions.config import Config
from detectlab.lesions.data import segmentation_data
from detectlab.lesions.train import segmentation_metrics

cfg = load_config(Config, "lesions", "cpu-real")
d = segmentation_data(cfg, "/tmp/unused-lesions")
base = baseline.evaluate(d.train, d.val, cfg.min_area)
empty = segmentation_metrics(d.val, [{"masks": np.zeros((0, *s.image.shape), bool), "boxes": np.zeros((0, 4)),
                                      "scores": np.zeros(0)} for s in d.val], cfg.seg.dice_score_thresh)
out = {"split": {k: d.info[k] for k in ("n_train", "n_val", "val_groups", "val_with_lesion", "val_instances",
                                        "guard_dropped", "n_train_groups")},
       "lung_threshold": base,
       "empty": {"ap50": empty["ap50"], "paper_ap50": empty["paper_ap50"], "paper_ap": empty["paper_ap"],
                 "dice": empty["dice"]}}
json.dump(out, open(sys.argv[1], "w"), indent=1, default=float)
print(json.dumps({"threshold": base["threshold"], "dice": {k: base["dice"][k] for k in ("pooled", "mean_slice", "mean_volume")},
                  "coco": base["coco"], "per_image": base["per_image"], "empty_dice": empty["dice"]["pooled"],
                  "empty_paper_ap50": empty["paper_ap50"]}, indent=1))
