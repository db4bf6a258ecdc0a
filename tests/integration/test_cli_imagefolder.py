"""An image-folder dataset (the ImageNet-12 path) through the real CLI, with coreset selection."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


def test_imagefolder_run_with_selection(cli, tiny_recipe, tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for label in ("cat", "dog"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    code, out = cli("run", tiny_recipe, "data=imagefolder", "data.root=data", "data.image_size=16",
                    "data.batch_size=4", "data.val_fraction=0.25", "data.augment=crop_flip", "data.padding=2",
                    "selector=craig", "selector.batch_size=4", "schedule.epochs=2", "schedule.warm_start_epochs=1")
    assert code == 0, out
    metrics = [json.loads(x) for x in (tmp_path / "runs/tiny/metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["full", "coreset"]
    # budget round(0.5 · 18) = 9 → ceil(9 / 4) = 3 whole batches of the partition [4, 4, 4, 4, 2]
    assert metrics[0]["samples"] == 18 and 9 <= metrics[1]["coreset_size"] <= 12
