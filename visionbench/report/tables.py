"""Tables for people: the per-epoch table printed at the end of a run."""
from __future__ import annotations

from typing import List


def epoch_table(records: List[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame(records, columns=["epoch", "train_loss", "train_ips", "val_top1", "val_top5",
                                           "elapsed_s", "lr", "image_size", "batch_size"])
    frame["epoch"] += 1   # people count epochs from 1
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
