"""ReColorAdv (Laidlaw & Feizi 2019) in PAT's CIFAR setting: a smooth, bounded recolouring.

An unseen threat model for ℓp-trained models: every pixel's colour is moved by a displacement
that is a smooth function of the colour itself, so equal colours stay equal and the image keeps
its structure. Colours are taken in CIE L*u*v* (roughly perceptually uniform), normalised to
[0, 1]-ish as ``(L/100, (u+100)/200, (v+100)/200)``.

Perturbation model: a grid Δ of shape (N, 3, Rx, Ry, Rz) over the normalised L, u, v axes is
trilinearly interpolated at each pixel's own colour c and added, ``c' = c + interp(Δ)(c)``, then
mapped back to RGB. Zero Δ is the identity (up to the RGB↔LUV round trip). This deliberately
differs from the reference code, which changes saturated colours even at zero perturbation.
Interpolation (with border padding) is a convex combination of grid values, so ``‖Δ‖∞ ≤ bound``
means every pixel's normalised LUV colour moves by at most ``bound`` per channel (before the final
clamp of the RGB output to [0, 1]).

Grayscale images (C = 1) have no colour space: a 1-D curve of displacements over intensity is
linearly interpolated and added in the same way.

Optimisation as in :mod:`advtrain.attacks.stadv`: Adam from zero, maximising the CW margin minus
``(smoothness/bound)`` times the grid's smoothness loss, projected onto the bound after each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks._common import attack_mode
from advtrain.attacks.budget import STEPS
from advtrain.attacks.losses import LossFn, margin_loss
from advtrain.attacks.stadv import SMOOTHNESS_EPS, adam_attack
from advtrain.attacks.threat import Threat
from advtrain.params import param

# sRGB (IEC 61966-2-1) linear RGB → XYZ, D65; its rows sum to the white point (Xn, Yn = 1, Zn).
_RGB_TO_XYZ = torch.tensor([[0.4124, 0.3576, 0.1805],
                            [0.2126, 0.7152, 0.0722],
                            [0.0193, 0.1192, 0.9504]], dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(dim=1)
# u'_n, v'_n of that white (0.1978, 0.4683 to four digits); deriving them from the same matrix
# makes sRGB white map to u* = v* = 0 exactly instead of ≈ 0.05.
_UN = float(4 * _WHITE[0] / (_WHITE[0] + 15 * _WHITE[1] + 3 * _WHITE[2]))
_VN = float(9 * _WHITE[1] / (_WHITE[0] + 15 * _WHITE[1] + 3 * _WHITE[2]))
_Y_KNEE = (6 / 29) ** 3  # below it, L* is linear in Y
_KAPPA = (29 / 3) ** 3
_EPS = 1e-6  # keeps chromaticity denominators away from zero at (and near) black


@dataclass
class ReColorAdvParams:
    """ReColorAdv (evaluation): displacement bound, Adam steps and step size, grid and smoothness."""

    bound: float = param(0.06, gt=0, help="ℓ∞ bound on the colour displacement, normalised LUV units")
    steps: int = STEPS.param(100, help="Adam steps")
    lr: float = param(0.001, gt=0, help="Adam step size")
    smoothness: float = param(0.0036, ge=0, help="grid-smoothness penalty; its weight is smoothness/bound")
    resolution: list[int] = param([16, 32, 32], help="grid points along the L, u, v axes (colour images)")
    gray_resolution: int = param(32, ge=2, help="points of the intensity curve (grayscale images)")

    def threat(self) -> Threat:
        return Threat("color", float(self.bound))


def _mix(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply a 3×3 matrix to the channel dimension of N×3×H×W."""
    return torch.einsum("ij,njhw->nihw", matrix.to(x), x)


def rgb_to_cieluv(x: Tensor) -> Tensor:
    """sRGB in [0, 1] (N×3×H×W) to normalised CIE L*u*v* ``(L/100, (u+100)/200, (v+100)/200)``.

    Fractional powers only see clamped arguments and the chromaticity denominator has an ε, so
    values and gradients are finite everywhere, black included.
    """
    linear = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055).pow(2.4))
    xyz = _mix(_RGB_TO_XYZ, linear)
    big_x, big_y, big_z = xyz.unbind(dim=1)
    lum = torch.where(big_y > _Y_KNEE, 116 * big_y.clamp(min=_Y_KNEE).pow(1 / 3) - 16, _KAPPA * big_y)
    denom = big_x + 15 * big_y + 3 * big_z + _EPS
    u = 13 * lum * (4 * big_x / denom - _UN)
    v = 13 * lum * (9 * big_y / denom - _VN)
    return torch.stack([lum / 100, (u + 100) / 200, (v + 100) / 200], dim=1)


def cieluv_to_rgb(z: Tensor) -> Tensor:
    """Normalised CIE L*u*v* (as :func:`rgb_to_cieluv` returns) back to sRGB, clamped to [0, 1].

    Written with ``a = 13·L·u'`` and ``b = 13·L·v'`` so that the only division is by ``b``, kept at
    least ε away from zero (sign preserved); out-of-gamut colours come out as finite values that
    the final clamp maps into [0, 1].
    """
    lum = 100 * z[:, 0]
    u = 200 * z[:, 1] - 100
    v = 200 * z[:, 2] - 100
    big_y = torch.where(lum > 8, ((lum + 16) / 116).pow(3), lum / _KAPPA)
    a = u + 13 * lum * _UN
    b = v + 13 * lum * _VN
    b = torch.where(b >= 0, b.clamp(min=_EPS), b.clamp(max=-_EPS))
    big_x = big_y * 9 * a / (4 * b)
    big_z = big_y * (12 * 13 * lum - 3 * a - 20 * b) / (4 * b)
    linear = _mix(_XYZ_TO_RGB, torch.stack([big_x, big_y, big_z], dim=1))
    srgb = torch.where(linear <= 0.0031308, 12.92 * linear,
                       1.055 * linear.clamp(min=0.0031308).pow(1 / 2.4) - 0.055)
    return srgb.clamp(0.0, 1.0)


def color_smoothness(delta: Tensor) -> Tensor:
    """Smoothness loss of a displacement grid (N, C, *grid), shape (N,).

    Over each grid axis, sums sqrt(‖Δ(q) − Δ(p)‖² + ε) for every grid point p and both neighbours q
    along that axis (the ends replicating p), the norm taken over the C displacement components.
    Works for the 3-D colour grid and the 1-D grayscale curve alike. Computed as twice the sum over
    the edges plus the constant sqrt(ε) of each replicated end: the same value without the copies
    that padding would make (this loss dominates the cost of a step on CPU).
    """
    total = delta.new_zeros(delta.shape[0])
    points = delta[0, 0].numel()
    for axis in range(2, delta.dim()):
        n = delta.shape[axis]
        step = delta.narrow(axis, 1, n - 1) - delta.narrow(axis, 0, n - 1)
        edges = (step.pow(2).sum(dim=1) + SMOOTHNESS_EPS).sqrt().flatten(1).sum(dim=1)
        total = total + 2 * edges + 2 * (points // n) * SMOOTHNESS_EPS**0.5
    return total


def _check_channels(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"ReColorAdv needs N×3×H×W colour or N×1×H×W grayscale images, got shape "
                         f"{tuple(x.shape)}")


def _to_grid_coords(t: Tensor) -> Tensor:
    """[0, 1] to grid_sample's [−1, 1] (align_corners=True: ±1 are the first and last grid points)."""
    return 2 * t - 1


def _shift_luv(luv: Tensor, delta: Tensor) -> Tensor:
    """``luv + interp(Δ)(luv)`` for N×3×H×W colours and a (N, 3, Rx, Ry, Rz) grid over (L, u, v).

    grid_sample's last grid dimension is ordered (x, y, z) = (last, middle, first spatial dim of
    Δ), hence (v, u, L).
    """
    coords = _to_grid_coords(luv.flip(1)).permute(0, 2, 3, 1).unsqueeze(1)  # (N, 1, H, W, 3)
    shift = F.grid_sample(delta, coords, mode="bilinear", padding_mode="border", align_corners=True)
    return luv + shift.squeeze(2)


def _shift_gray(x: Tensor, delta: Tensor) -> Tensor:
    """``x + interp(curve)(x)`` for N×1×H×W intensities and a (N, 1, R) curve, clamped to [0, 1]."""
    coords = torch.stack([_to_grid_coords(x[:, 0]), torch.zeros_like(x[:, 0])], dim=-1)  # (N, H, W, 2)
    shift = F.grid_sample(delta.unsqueeze(2), coords, mode="bilinear", padding_mode="border", align_corners=True)
    return (x + shift).clamp(0.0, 1.0)


def apply_color_grid(x: Tensor, delta: Tensor) -> Tensor:
    """Recolour [0, 1] images: a (N, 3, Rx, Ry, Rz) grid in LUV for colour, a (N, 1, R) curve for gray.

    Raises:
        ValueError: ``x`` has neither 3 nor 1 channels.
    """
    _check_channels(x)
    if x.shape[1] == 1:
        return _shift_gray(x, delta)
    return cieluv_to_rgb(_shift_luv(rgb_to_cieluv(x), delta))


def _initial_grid(x: Tensor, params: ReColorAdvParams) -> Tensor:
    """Zero displacements: (N, 3, *resolution) for colour, (N, 1, gray_resolution) for gray."""
    if x.shape[1] == 1:
        shape = [params.gray_resolution]
    else:
        shape = list(params.resolution)
        if len(shape) != 3 or min(shape) < 2:
            raise ValueError(f"ReColorAdv resolution must be three sizes >= 2 (L, u, v), got {shape}")
    return x.new_zeros(x.shape[0], x.shape[1], *shape)


def recolor(model: nn.Module, x: Tensor, y: Tensor, params: ReColorAdvParams, *, keep_best: bool = True,
            return_grid: bool = False, loss_fn: LossFn | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """ReColorAdv adversarial examples for [0, 1] images ``x`` (N×3×H×W or N×1×H×W) with labels ``y``.

    Runs ``model`` in eval mode (every submodule's flag restored afterwards). Δ starts at zero
    and is fp32; Adam minimises ``−loss + (smoothness/bound)·color_smoothness`` and each step is
    clamped to [−bound, bound]. ``keep_best`` (evaluation) returns per example the worst iterate:
    misclassified first, then the highest loss; the zero start is offered too.

    Args:
        model: maps [0, 1] images to logits.
        x: clean images in [0, 1].
        y: labels, shape (N,).
        params: bound, steps, Adam step size, smoothness, grid resolutions.
        keep_best: return the worst iterate seen instead of the last one.
        return_grid: also return Δ, with ``x_adv == apply_color_grid(x, Δ)``.
        loss_fn: per-sample loss to maximise and to rank iterates by; defaults to the CW margin.

    Returns:
        Detached ``x_adv`` in ``x``'s dtype, or ``(x_adv, Δ)``.

    Raises:
        ValueError: ``x`` has neither 3 nor 1 channels, or ``resolution`` is not three sizes >= 2.
    """
    _check_channels(x)
    loss_fn = loss_fn or margin_loss
    weight = params.smoothness / params.bound
    with attack_mode(model):
        x0 = x.detach().to(torch.float32, copy=True)
        y0 = y.detach().clone()
        if x0.shape[1] == 1:
            def render(d: Tensor) -> Tensor:
                return _shift_gray(x0, d)
        else:
            luv = rgb_to_cieluv(x0)  # the colours never change; convert once

            def render(d: Tensor) -> Tensor:
                return cieluv_to_rgb(_shift_luv(luv, d))
        delta = adam_attack(
            model, y0, _initial_grid(x0, params), render=render,
            penalty=lambda d: weight * color_smoothness(d),
            project=lambda d: d.clamp(-params.bound, params.bound),
            steps=params.steps, lr=params.lr, loss_fn=loss_fn, keep_best=keep_best,
        )
        with torch.no_grad():
            x_adv = render(delta).to(x.dtype)
    return (x_adv, delta) if return_grid else x_adv


__all__ = ["ReColorAdvParams", "apply_color_grid", "cieluv_to_rgb", "color_smoothness", "recolor",
           "rgb_to_cieluv"]
