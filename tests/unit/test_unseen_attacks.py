"""Unseen-threat-model attacks: StAdv and ReColorAdv.

CIELUV is checked against published values; the smoothness losses against brute-force loops;
the attacks on small seeded CNNs (CPU, 16×16 inputs, few steps) for the bound, [0, 1], the
returned parameters reproducing the image, a higher margin, and restored training flags.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from advtrain.attacks.losses import margin_loss
from advtrain.attacks.recolor import (
    ReColorAdvParams,
    apply_color_grid,
    cieluv_to_rgb,
    color_smoothness,
    recolor,
    rgb_to_cieluv,
)
from advtrain.attacks.stadv import StAdvParams, flow_smoothness, identity_grid, stadv, warp
from advtrain.models import build_model

ROOT_EPS = math.sqrt(1e-10)


def small_model(in_chans: int = 3, seed: int = 0) -> nn.Module:
    """An untrained small CNN whose last layer is scaled up: at init its logits barely depend on the
    input, and the smoothness penalties would then outweigh the margin."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", num_classes=4, in_chans=in_chans, mean=(0.5,) * in_chans,
                        std=(0.25,) * in_chans).eval()
    with torch.no_grad():
        model.last_linear.weight.mul_(50.0)
    return model


def batch(n: int = 6, chans: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, chans, 16, 16, generator=g)
    x[0, :, :3] = 0.0  # black and white patches exercise the colour-space edges
    x[1, :, :3] = 1.0
    return x, torch.randint(0, 4, (n,), generator=g)


def margins(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return margin_loss(model(x), y)


def luv_unnormalised(rgb: tuple[float, float, float]) -> list[float]:
    z = rgb_to_cieluv(torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)).view(3)
    return [100 * z[0].item(), 200 * z[1].item() - 100, 200 * z[2].item() - 100]


# --- colour space -------------------------------------------------------------------------------

# Published sRGB (D65) L*u*v* values. The 4-digit matrix and the white point derived from it move
# these by at most ~0.04 (red u*: 175.05), so 0.1 still fails on a wrong constant or formula.
@pytest.mark.parametrize(("rgb", "expected"), [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 175.01, 37.76)),
    ((0.0, 1.0, 0.0), (87.73, -83.07, 107.42)),
    ((0.0, 0.0, 1.0), (32.30, -9.40, -130.35)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
])
def test_cieluv_matches_published_values(rgb, expected):
    assert luv_unnormalised(rgb) == pytest.approx(expected, abs=0.1)


def test_cieluv_round_trip_and_gradients_are_finite():
    x, _ = batch(4)
    x = x.requires_grad_(True)
    back = cieluv_to_rgb(rgb_to_cieluv(x))
    assert (back - x).abs().max().item() <= 1e-4
    (grad,) = torch.autograd.grad(back.sum(), x)
    assert torch.isfinite(grad).all()


def test_cieluv_to_rgb_is_finite_and_clamped_out_of_gamut():
    z = torch.empty(2, 3, 8, 8).uniform_(-0.5, 1.5).requires_grad_(True)
    rgb = cieluv_to_rgb(z)
    assert rgb.min() >= 0 and rgb.max() <= 1
    (grad,) = torch.autograd.grad(rgb.sum(), z)
    assert torch.isfinite(grad).all()


# --- identities and smoothness ------------------------------------------------------------------

def test_zero_flow_and_zero_grid_are_identities():
    x, _ = batch(3)
    assert (warp(x, torch.zeros_like(identity_grid(x))) - x).abs().max().item() <= 1e-6
    assert (apply_color_grid(x, torch.zeros(3, 3, 4, 5, 6)) - x).abs().max().item() <= 1e-4
    gray, _ = batch(3, chans=1)
    assert (apply_color_grid(gray, torch.zeros(3, 1, 7)) - gray).abs().max().item() <= 1e-6


def test_color_grid_moves_luv_by_at_most_the_bound():
    x, _ = batch(3)
    delta = torch.empty(3, 3, 4, 5, 6).uniform_(-0.05, 0.05)
    # Compare in LUV only where the RGB output is not clamped (inside the gamut).
    out = apply_color_grid(x, delta)
    inside = ((out > 1e-3) & (out < 1 - 1e-3)).all(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    moved = (rgb_to_cieluv(out) - rgb_to_cieluv(x))[inside]
    assert moved.numel() > 0 and moved.abs().max().item() <= 0.05 + 1e-3


def test_warp_flow_is_ordered_x_then_y():
    x, _ = batch(2)
    step = 2 / (16 - 1)  # one pixel in align_corners=True coordinates
    right = torch.zeros(2, 16, 16, 2)
    right[..., 0] = step
    assert torch.allclose(warp(x, right)[..., :-1], x[..., 1:], atol=1e-6)
    assert torch.allclose(warp(x, right)[..., -1], x[..., -1], atol=1e-6)  # border padding
    down = torch.zeros(2, 16, 16, 2)
    down[..., 1] = step
    assert torch.allclose(warp(x, down)[..., :-1, :], x[..., 1:, :], atol=1e-6)


def brute_interp(values: Tensor, coords: list[float]) -> Tensor:
    """Multilinear interpolation of ``values`` (C, *grid) at ``coords`` in [0, 1]^d, border-clamped."""
    sizes = values.shape[1:]
    lows, fracs = [], []
    for c, size in zip(coords, sizes, strict=True):
        pos = min(max(c, 0.0), 1.0) * (size - 1)
        low = min(int(math.floor(pos)), size - 2)
        lows.append(low)
        fracs.append(pos - low)
    out = torch.zeros(values.shape[0], dtype=values.dtype)
    for corner in itertools.product((0, 1), repeat=len(sizes)):
        weight = math.prod(f if bit else 1 - f for bit, f in zip(corner, fracs, strict=True))
        out += weight * values[(slice(None), *[lo + bit for lo, bit in zip(lows, corner, strict=True)])]
    return out


def test_color_grid_interpolates_at_each_pixels_luv():
    """The shift of every in-gamut pixel is the trilinear interpolation of Δ at its (L, u, v)."""
    g = torch.Generator().manual_seed(3)
    x = 0.3 + 0.4 * torch.rand(1, 3, 4, 4, generator=g)  # far from the gamut's edges
    delta = 0.02 * (2 * torch.rand(1, 3, 3, 4, 5, generator=g) - 1)
    luv = rgb_to_cieluv(x)[0].flatten(1)
    moved = (rgb_to_cieluv(apply_color_grid(x, delta))[0].flatten(1) - luv)
    for k in range(luv.shape[1]):
        expected = brute_interp(delta[0], luv[:, k].tolist())
        assert torch.allclose(moved[:, k], expected, atol=2e-4)


def test_gray_curve_interpolates_at_each_intensity():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 4, 4, generator=g)
    curve = 0.05 * (2 * torch.rand(2, 1, 5, generator=g) - 1)
    out = apply_color_grid(x, curve)
    for b, i, j in itertools.product(range(2), range(4), range(4)):
        expected = (x[b, 0, i, j] + brute_interp(curve[b], [x[b, 0, i, j].item()])[0]).clamp(0, 1)
        assert out[b, 0, i, j].item() == pytest.approx(expected.item(), abs=1e-6)


def brute_flow_smoothness(flow: Tensor) -> list[float]:
    n, h, w, _ = flow.shape
    out = []
    for b in range(n):
        total = 0.0
        for i, j in itertools.product(range(h), range(w)):
            for di, dj in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                qi, qj = min(max(i + di, 0), h - 1), min(max(j + dj, 0), w - 1)
                diff = flow[b, qi, qj] - flow[b, i, j]
                total += math.sqrt(float((diff ** 2).sum()) + 1e-10)
        out.append(total)
    return out


def brute_color_smoothness(delta: Tensor) -> list[float]:
    sizes = delta.shape[2:]
    out = []
    for b in range(delta.shape[0]):
        total = 0.0
        for point in itertools.product(*map(range, sizes)):
            for axis, step in itertools.product(range(len(sizes)), (-1, 1)):
                other = list(point)
                other[axis] = min(max(other[axis] + step, 0), sizes[axis] - 1)
                diff = delta[(b, slice(None), *other)] - delta[(b, slice(None), *point)]
                total += math.sqrt(float((diff ** 2).sum()) + 1e-10)
        out.append(total)
    return out


def test_flow_smoothness_matches_brute_force():
    flow = torch.randn(2, 4, 5, 2, dtype=torch.float64)
    assert flow_smoothness(flow).tolist() == pytest.approx(brute_flow_smoothness(flow), rel=1e-9)


@pytest.mark.parametrize("shape", [(2, 3, 3, 4, 2), (2, 1, 6)])
def test_color_smoothness_matches_brute_force(shape):
    delta = torch.randn(*shape, dtype=torch.float64)
    assert color_smoothness(delta).tolist() == pytest.approx(brute_color_smoothness(delta), rel=1e-9)


def test_constant_perturbations_are_smooth():
    flow = torch.full((2, 4, 5, 2), 0.03)
    # Only the sqrt(1e-10) floor remains: 4 neighbours per pixel, 2 per grid point per axis.
    assert flow_smoothness(flow).tolist() == pytest.approx([4 * 20 * ROOT_EPS] * 2, rel=1e-3)
    delta = torch.full((2, 3, 3, 4, 2), -0.02)
    assert color_smoothness(delta).tolist() == pytest.approx([3 * 2 * 24 * ROOT_EPS] * 2, rel=1e-3)


# --- the attacks --------------------------------------------------------------------------------

def assert_modes_restored(model: nn.Module) -> None:
    assert all(m.training for m in model.modules())


def record_modes(model: nn.Module) -> list[bool]:
    """The training flag of every BatchNorm at every forward pass (they must be in eval mode)."""
    seen: list[bool] = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    return seen


def test_stadv_contract():
    model = small_model()
    x, y = batch()
    clean = margins(model, x, y)
    zero = margins(model, warp(x, torch.zeros_like(identity_grid(x))), y)
    params = StAdvParams(steps=10)
    seen = record_modes(model)
    model.train()
    x_adv, flow = stadv(model, x, y, params, return_flow=True)
    assert_modes_restored(model)
    assert seen and not any(seen)
    model.eval()
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert flow.shape == (x.shape[0], 16, 16, 2)
    assert flow.abs().max().item() <= params.bound + 1e-6
    assert (identity_grid(x) + flow).abs().max().item() <= 1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.allclose(x_adv, warp(x, flow), atol=1e-6)
    adv = margins(model, x_adv, y)
    assert adv.mean() > clean.mean() + 0.3
    # The zero flow is the first point offered to the tracker, so per example keep_best never does worse.
    assert (adv >= zero - 1e-5).all()


def test_stadv_last_iterate():
    model = small_model()
    x, y = batch()
    x_last, flow = stadv(model, x, y, StAdvParams(steps=5), keep_best=False, return_flow=True)
    assert torch.allclose(x_last, warp(x, flow), atol=1e-6)
    assert flow.abs().max().item() <= 0.05 + 1e-6
    assert flow.abs().max().item() > 0.0


def test_stadv_penalty_alone_keeps_the_zero_flow():
    """At zero flow the smoothness gradient vanishes (the ε), so without a loss gradient Adam never moves."""
    model = small_model()
    x, y = batch()
    flat = stadv(model, x, y, StAdvParams(steps=3), keep_best=False, return_flow=True,
                 loss_fn=lambda logits, y: logits.sum(dim=1) * 0.0)[1]
    assert flat.abs().max().item() == 0.0


def test_attacks_reject_batch_reduced_losses():
    model = small_model()
    x, y = batch()
    with pytest.raises(ValueError, match="per-sample"):
        stadv(model, x, y, StAdvParams(steps=1), loss_fn=lambda logits, y: margin_loss(logits, y).mean())
    with pytest.raises(ValueError, match="per-sample"):
        recolor(model, x, y, ReColorAdvParams(steps=1), loss_fn=lambda logits, y: margin_loss(logits, y).sum())


def test_stadv_examples_are_independent():
    model = small_model()
    x, y = batch()
    params = StAdvParams(steps=4)
    whole = stadv(model, x, y, params, return_flow=True)[1]
    part = stadv(model, x[:2], y[:2], params, return_flow=True)[1]
    assert torch.allclose(whole[:2], part, atol=1e-4)


@pytest.mark.parametrize("chans", [3, 1])
def test_recolor_contract(chans):
    model = small_model(in_chans=chans)
    x, y = batch(chans=chans)
    params = ReColorAdvParams(steps=10, lr=0.01)
    grid_shape = (3, *params.resolution) if chans == 3 else (1, params.gray_resolution)
    clean = margins(model, x, y)
    zero = margins(model, apply_color_grid(x, torch.zeros(x.shape[0], *grid_shape)), y)
    seen = record_modes(model)
    model.train()
    x_adv, delta = recolor(model, x, y, params, return_grid=True)
    assert_modes_restored(model)
    assert seen and not any(seen)
    model.eval()
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert delta.shape == (x.shape[0], *grid_shape)
    assert delta.abs().max().item() <= params.bound + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.allclose(x_adv, apply_color_grid(x, delta), atol=1e-6)
    adv = margins(model, x_adv, y)
    assert adv.mean() > clean.mean() + 0.3
    assert (adv >= zero - 1e-5).all()


def test_recolor_default_lr_still_climbs():
    model = small_model()
    x, y = batch()
    x_adv, delta = recolor(model, x, y, ReColorAdvParams(steps=6), keep_best=False, return_grid=True)
    assert 0 < delta.abs().max().item() <= ReColorAdvParams.bound + 1e-6
    assert margins(model, x_adv, y).mean() > margins(model, x, y).mean()


def test_recolor_rejects_other_channel_counts():
    model = small_model()
    x = torch.rand(2, 2, 16, 16)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="3×H×W colour or N×1×H×W"):
        recolor(model, x, y, ReColorAdvParams(steps=1))
    with pytest.raises(ValueError, match="channels|colour"):
        apply_color_grid(x, torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="resolution"):
        recolor(model, torch.rand(2, 3, 16, 16), y, ReColorAdvParams(steps=1, resolution=[4, 4]))
