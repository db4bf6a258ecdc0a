"""CUDA paths (bf16 autocast, channels_last, data resident on the GPU); skipped without a GPU."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_tiny_run_on_cuda(cli, tiny_recipe, tmp_path, precision):
    code, out = cli("run", tiny_recipe, "device=cuda", f"precision={precision}", "schedule.epochs=2",
                    "selector=gradmatch", "schedule.warm_start_epochs=1", "schedule.select_every=1")
    assert code == 0, out
    metrics = [json.loads(x) for x in (tmp_path / "runs/tiny/metrics.jsonl").read_text().splitlines()]
    assert all(m["train_loss"] == m["train_loss"] for m in metrics)  # finite, not NaN


def test_source_on_device_loads_the_same_batches():
    from advtrain.data import ArraySource

    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    source = ArraySource(images, torch.arange(10))
    idx = torch.tensor([3, 1, 7])
    assert torch.equal(source.to_device("cuda").load(idx, "cuda").cpu(), source.load(idx))
