"""LPIPS distance (PAT form) and Fast-LPA."""

from __future__ import annotations

import lpips
import pytest
import torch

from advtrain.attacks.losses import margin_loss
from advtrain.attacks.perceptual import FastLPAParams, PerceptualDistance, fast_lpa
from advtrain.attacks.perceptual.distance import LpipsBackbone, self_extractor
from advtrain.errors import UserError
from advtrain.models import build_model


def _model(name: str = "small_cnn"):
    torch.manual_seed(0)
    return build_model(name, num_classes=4, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3).eval()


def _images(n: int = 4, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["small_cnn", "resnet_tiny_cifar"])
def test_self_distance_is_zero_on_itself_and_symmetric(name):
    distance = PerceptualDistance(self_extractor(_model(name)))
    x, y = _images(), _images(seed=2)
    with torch.no_grad():
        assert torch.allclose(distance(x, x), torch.zeros(4), atol=1e-6)
        assert torch.allclose(distance(x, y), distance(y, x), atol=1e-6)
        assert (distance(x, y) > 0).all()


def test_squared_distance_equals_the_lpips_package_without_learned_weights():
    reference = lpips.LPIPS(net="alex", lpips=False, pnet_rand=True, verbose=False).eval()
    ours = LpipsBackbone("alexnet", random_weights=True)
    ours.net.load_state_dict(reference.net.state_dict())
    distance = PerceptualDistance(ours)
    x, y = _images(size=64), _images(size=64, seed=3)
    with torch.no_grad():
        expected = reference(x, y, normalize=True).flatten()
        got = distance(x, y) ** 2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_missing_imagenet_weights_is_a_clear_error(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(UserError, match="alexnet-owt-7be5be79.pth"):
            LpipsBackbone("alexnet")
    finally:
        torch.hub.set_dir(previous)


def test_self_distance_refuses_unknown_architectures():
    with pytest.raises(UserError, match="attack.lpips=alexnet"):
        self_extractor(torch.nn.Linear(3, 2))


def test_fast_lpa_raises_the_margin_stays_in_the_box_and_restores_modes():
    model = _model().train()
    x = _images(8)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # every example starts correctly classified
    model.train()
    params = FastLPAParams(bound=0.5, steps=5, only_attack_correct=True)
    x_adv = fast_lpa(model, x, y, params)
    assert model.training and all(m.training for m in model.modules())
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    model.eval()
    with torch.no_grad():
        assert float(margin_loss(model(x_adv), y).mean()) > float(margin_loss(model(x), y).mean())
        achieved = PerceptualDistance(self_extractor(model))(x, x_adv)
    assert torch.isfinite(achieved).all() and float(achieved.max()) < 4 * params.bound


def test_fast_lpa_leaves_misclassified_examples_alone():
    model = _model()
    x = _images(8)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 4
    x_adv = fast_lpa(model, x, wrong, FastLPAParams(steps=3, only_attack_correct=True))
    assert torch.equal(x_adv, x)
