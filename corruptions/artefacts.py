"""Modality-specific artefacts: dermoscopy and microscopy (MedMNIST-C), MRI (TorchIO).

Same signature as :mod:`corruptions.functional`: ``fn(x, param, draw, scale) -> Tensor`` on
``[B, C, *S]`` in ``[0, 1]``. None of them moves the image content, so targets stay valid.

* Dermoscopy / microscopy, from Di Salvo et al. 2024 (MedMNIST-C): ``black_corner`` (the dark
  vignette of a dermatoscope's round field of view), ``stain_deposit`` (dark ink deposits),
  ``bubble`` (air bubbles under the cover slip). MedMNIST-C's ``characters`` (rendered text) is
  not in the family: it needs a font rasteriser, which does not run batched on the device.
* MRI, from Pérez-García et al. 2021 (TorchIO) and the models TorchIO cites: ``bias_field``
  (Van Leemput et al. 1999: a smooth multiplicative field, exp of a polynomial),
  ``ghosting`` (periodic k-space planes attenuated), ``spike`` (a k-space spike: herringbone
  stripes) and ``mri_motion`` (Shaw et al. 2019: k-space segments acquired at different rigid
  positions). They act on every spatial dim, so they work on slices and volumes alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from corruptions.draw import Draw
from corruptions.functional import _flat_planes

# --------------------------------------------------------------------------- dermoscopy / microscopy


def black_corner(x: Tensor, multiplier: float, draw: Draw, scale: float) -> Tensor:
    """Dermoscopy black corners (MedMNIST-C ``black_corner``): every pixel outside the disk
    centred at ``(W // 2, H // 2)`` of radius ``int(multiplier · r0)``, ``r0`` the largest
    radius that fits the image, is set to 0 (smaller multiplier: more black); volumes
    in-plane. Deterministic."""
    planes, shape = _flat_planes(x)
    h, w = planes.shape[-2:]
    cx, cy = w // 2, h // 2
    r = int(min(cx, cy, w - cx, h - cy) * float(multiplier))
    yy = torch.arange(h, device=x.device).reshape(h, 1)
    xx = torch.arange(w, device=x.device).reshape(1, w)
    inside = ((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r
    return (planes * inside.to(x.dtype)).reshape(shape)


#: MedMNIST-C's ink sizes at 224 px by severity (its ink bank holds 24, 32 and 42 px masks for
#: the severities it uses)
INK_SIZES = (24, 24, 24, 32, 42)


def stain_deposit(x: Tensor, param: tuple[int, int], draw: Draw, scale: float) -> Tensor:
    """Stain (ink) deposits (MedMNIST-C ``stain_deposit``): ``n ~ U{1, …, max_marks}`` opaque
    dark marks per image (``n = max_marks`` when it is 1), each an ink blob of side
    ``ink_size`` placed uniformly at least 10 px from the border; the image is multiplied by
    ``1 − ink`` in every channel. ``param = (max_marks, ink_size)`` at 224 px.

    MedMNIST-C draws each mark from a bank of binary ink masks; the masks are not reproduced
    here. Each blob is the union of four discs (centres within the middle half of the
    ``ink_size`` square, radii ``ink_size·U(1/6, 1/3)``) — a binary blob covering about the
    same fraction of its square (≈ 0.5–0.7) as MedMNIST-C's inks."""
    max_marks, ink = int(param[0]), float(param[1]) * scale
    planes, shape = _flat_planes(x)
    b, _, h, w = planes.shape
    side = max(3.0, ink)
    margin = 10.0 * scale
    count = draw.integers(1, max_marks, 1).reshape(b) if max_marks > 1 else torch.full(
        (b,), max_marks, device=x.device)
    yy = torch.arange(h, device=x.device, dtype=torch.float32).reshape(1, h, 1)
    xx = torch.arange(w, device=x.device, dtype=torch.float32).reshape(1, 1, w)
    keep = torch.ones(b, h, w, device=x.device, dtype=torch.bool)
    for k in range(max_marks):
        u = draw.uniform(2 + 4 * 3).float()  # corner (2), four discs × (cx, cy, r)
        x0 = margin + u[:, 0] * max(0.0, w - side - 2 * margin)
        y0 = margin + u[:, 1] * max(0.0, h - side - 2 * margin)
        blob = torch.zeros(b, h, w, device=x.device, dtype=torch.bool)
        for d in range(4):
            cx = x0 + side * (0.25 + 0.5 * u[:, 2 + 3 * d])
            cy = y0 + side * (0.25 + 0.5 * u[:, 3 + 3 * d])
            r = side * (1 / 6 + u[:, 4 + 3 * d] / 6)
            blob |= ((xx - cx.reshape(b, 1, 1)) ** 2 + (yy - cy.reshape(b, 1, 1)) ** 2) <= (r ** 2).reshape(b, 1, 1)
        inbox = (xx >= x0.reshape(b, 1, 1)) & (xx < (x0 + side).reshape(b, 1, 1)) & \
                (yy >= y0.reshape(b, 1, 1)) & (yy < (y0 + side).reshape(b, 1, 1))
        active = (k < count).reshape(b, 1, 1)
        keep &= ~(blob & inbox & active)
    return (planes * keep[:, None].to(x.dtype)).reshape(shape)


def bubble(x: Tensor, param: tuple[int, int], draw: Draw, scale: float) -> Tensor:
    """Air bubbles (MedMNIST-C ``bubble``): ``n ~ U{7, …, max_bubbles}`` translucent white discs
    per image, radius ``r ~ U{3, …, max_radius}`` px, centre uniform with the disc inside the
    image, drawn in order on a transparent layer — a rim 2 px wide of opacity 130/255 and the
    inside at 100/255, a later bubble covering an earlier one — then laid over the image:
    ``x·(1 − α) + α``. ``param = (max_radius, max_bubbles)`` at 224 px; volumes in-plane."""
    max_radius, max_bubbles = int(param[0]), int(param[1])
    planes, shape = _flat_planes(x)
    b, _, h, w = planes.shape
    n = draw.integers(min(7, max_bubbles), max_bubbles, 1).reshape(b)
    yy = torch.arange(h, device=x.device, dtype=torch.float32).reshape(1, h, 1)
    xx = torch.arange(w, device=x.device, dtype=torch.float32).reshape(1, 1, w)
    alpha = torch.zeros(b, h, w, device=x.device, dtype=torch.float32)
    border = 2.0 * scale
    for k in range(max_bubbles):
        u = draw.uniform(3).float()
        r = (3 + torch.floor(u[:, 0] * (max_radius - 3 + 1)).clamp(max=max_radius - 3)) * scale
        cx = r + u[:, 1] * (w - 2 * r).clamp_min(0)
        cy = r + u[:, 2] * (h - 2 * r).clamp_min(0)
        d2 = (xx - cx.reshape(b, 1, 1)) ** 2 + (yy - cy.reshape(b, 1, 1)) ** 2
        active = (k < n).reshape(b, 1, 1)
        rim = active & (d2 <= ((r + border) ** 2).reshape(b, 1, 1))
        inner = active & (d2 <= (r ** 2).reshape(b, 1, 1))
        alpha = torch.where(rim, torch.full_like(alpha, 130 / 255), alpha)
        alpha = torch.where(inner, torch.full_like(alpha, 100 / 255), alpha)
    a = alpha[:, None].to(x.dtype)
    return (planes * (1 - a) + a).reshape(shape)


# --------------------------------------------------------------------------- MRI (TorchIO)


def _kspace(x: Tensor) -> Tensor:
    """Centred k-space of every spatial dim (``fftshift(fftn(x))``), complex."""
    dims = tuple(range(2, x.ndim))
    return torch.fft.fftshift(torch.fft.fftn(x.float(), dim=dims), dim=dims)


def _image(k: Tensor, like: Tensor) -> Tensor:
    dims = tuple(range(2, k.ndim))
    return torch.fft.ifftn(torch.fft.ifftshift(k, dim=dims), dim=dims).real.to(like.dtype)


def bias_field(x: Tensor, coefficient: float, draw: Draw, scale: float) -> Tensor:
    """MRI bias field (TorchIO ``RandomBiasField``, after Van Leemput et al. 1999): ``x`` times
    ``exp(Σ c_ijk · u^i v^j w^k)`` over every monomial of total order ≤ 3 of the centred,
    max-normalised voxel coordinates, ``c ~ U(−coefficient, coefficient)`` per image (TorchIO's
    default: 0.5)."""
    orders = _monomials(3, x.ndim - 2)
    coef = (draw.uniform(len(orders)) * 2 - 1) * float(coefficient)  # [B, M]
    return apply_bias_field(x, coef)


def apply_bias_field(x: Tensor, coef: Tensor, order: int = 3) -> Tensor:
    """``x·exp(Σ_m coef[:, m]·monomial_m)`` with the monomials of :func:`_monomials` (total
    degree ≤ ``order``, first coordinate's power outermost, as TorchIO orders them) of the
    centred coordinates ``k − s/2 + 0.5`` divided by their maximum. ``coef``: ``[B, M]``."""
    spatial = x.shape[2:]
    n = len(spatial)
    axes = []
    for s in spatial:
        t = torch.arange(s, device=x.device, dtype=torch.float64) - s / 2 + 0.5
        axes.append(t / t.max() if t.max() > 0 else t)
    grids = torch.meshgrid(*axes, indexing="ij")
    orders = _monomials(order, n)
    if coef.shape[-1] != len(orders):
        raise ValueError(f"bias field: {coef.shape[-1]} coefficients for {len(orders)} monomials")
    field = torch.zeros(x.shape[0], *spatial, device=x.device, dtype=torch.float64)
    for m, powers in enumerate(orders):
        mono = torch.ones(spatial, device=x.device, dtype=torch.float64)
        for g, p in zip(grids, powers):
            mono = mono * g ** p
        field = field + coef[:, m].double().reshape(-1, *([1] * n)) * mono
    return x * torch.exp(field)[:, None].to(x.dtype)


def _monomials(order: int, n: int) -> list[tuple[int, ...]]:
    """Exponent tuples of every monomial in ``n`` variables with total degree ≤ ``order``."""
    if n == 0:
        return [()]
    return [(p, *rest) for p in range(order + 1) for rest in _monomials(order - p, n - 1)]


def ghosting(x: Tensor, param: tuple[int, float], draw: Draw, scale: float) -> Tensor:
    """MRI ghosting (TorchIO ``Ghosting``): in centred k-space, every ``n``-th plane along one
    spatial axis (drawn per image) is multiplied by ``1 − intensity``, the central plane
    restored; ``n ~ U{4, …, max_ghosts}`` per image (TorchIO's default range 4–10).
    ``param = (max_ghosts, intensity)``."""
    max_ghosts, intensity = int(param[0]), float(param[1])
    b, nd = x.shape[0], x.ndim - 2
    ghosts = draw.integers(min(4, max_ghosts), max_ghosts, 1).reshape(b)
    axis = draw.integers(0, nd - 1, 1).reshape(b)
    return apply_ghosting(x, ghosts, axis, intensity)


def apply_ghosting(x: Tensor, ghosts: Tensor, axis: Tensor, intensity: float) -> Tensor:
    """Ghosting with ``ghosts[b]`` (``[B]`` ints) along spatial axis ``axis[b]`` (0 = the first
    spatial dim) at ``intensity``: centred k-space planes ``0, n, 2n, …`` times
    ``1 − intensity``, the central plane (index ``size // 2``) kept."""
    k = _kspace(x)
    b = x.shape[0]
    spatial = x.shape[2:]
    nd = len(spatial)
    ghosts, axis = ghosts.to(x.device), axis.to(x.device)
    mult = torch.ones(b, *spatial, device=x.device)
    for a, size in enumerate(spatial):
        idx = torch.arange(size, device=x.device)
        shape = [1] * nd
        shape[a] = size
        planes = ((idx.reshape(1, -1) % ghosts.reshape(-1, 1)) == 0) & (idx.reshape(1, -1) != size // 2)
        planes = planes.reshape(b, *shape).expand(b, *spatial)
        chosen = (axis == a).reshape(b, *([1] * nd))
        mult = torch.where(chosen & planes, torch.full_like(mult, 1 - intensity), mult)
    return _image(k * mult[:, None], x)


def spike(x: Tensor, intensity: float, draw: Draw, scale: float) -> Tensor:
    """MRI spike / herringbone artefact (TorchIO ``Spike``): one spike at a uniform random
    position of centred k-space (per image, the same for its channels) of magnitude
    ``intensity`` × the largest k-space magnitude (TorchIO's default intensity range is 1–3)."""
    u = draw.uniform(x.ndim - 2, dtype=torch.float64)
    return apply_spike(x, u, intensity)


def apply_spike(x: Tensor, position: Tensor, intensity: float) -> Tensor:
    """One k-space spike per image at ``floor(position·shape)`` of centred k-space
    (``position``: ``[B, n_spatial]`` in ``[0, 1)``), of ``intensity`` × the largest k-space
    magnitude of the channel (for non-negative images: the DC term, which TorchIO's
    ``spectrum.max()`` picks)."""
    k = _kspace(x)
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    u = position.to(x.device).double()
    flat_index = torch.zeros(b, dtype=torch.long, device=x.device)
    for a, size in enumerate(spatial):
        flat_index = flat_index * size + torch.floor(u[:, a] * size).long().clamp_(0, size - 1)
    peak = k.abs().flatten(2).amax(dim=2)  # [B, C]
    flat = k.reshape(b, c, -1).clone()
    add = (float(intensity) * peak).to(flat.dtype)
    flat.scatter_add_(2, flat_index.reshape(b, 1, 1).expand(b, c, 1), add.reshape(b, c, 1))
    return _image(flat.reshape(k.shape), x)


def mri_motion(x: Tensor, param: tuple[float, float, int], draw: Draw, scale: float) -> Tensor:
    """MRI motion (TorchIO ``RandomMotion``, after Shaw et al. 2019): ``n`` rigid moves, each
    with rotations ``U(−degrees, degrees)`` (one angle in 2-D, three in 3-D) and translations
    ``U(−translation, translation)`` voxels, happen at sorted times ``U(0, 1)``; k-space is
    filled along the last spatial axis by segments, each from the image at the position the
    patient held during it (the first segment at the original position). ``param = (degrees,
    translation, n)`` (TorchIO's default: 10°, 10 mm, 2). Voxels are taken as isotropic."""
    degrees, translation, n_moves = float(param[0]), float(param[1]), int(param[2])
    b = x.shape[0]
    spatial = x.shape[2:]
    nd = len(spatial)
    times = torch.sort(draw.uniform(n_moves), dim=1).values  # [B, n]
    k_out = _kspace(x)
    last = spatial[-1]
    pos = torch.arange(last, device=x.device).float() / last  # position of each k-space line
    for m in range(n_moves):
        theta = _rigid(draw, b, nd, degrees, translation, spatial, x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        moved = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        start = times[:, m]
        end = times[:, m + 1] if m + 1 < n_moves else torch.full_like(start, 2.0)
        seg = (pos.reshape(1, -1) >= start.reshape(-1, 1)) & (pos.reshape(1, -1) < end.reshape(-1, 1))
        seg = seg.reshape(b, 1, *([1] * (nd - 1)), last)
        k_out = torch.where(seg, _kspace(moved), k_out)
    return _image(k_out, x)


def _rigid(draw: Draw, b: int, nd: int, degrees: float, translation: float,
           spatial: tuple[int, ...], device: Any) -> Tensor:
    """``[B, nd, nd+1]`` affine matrices (normalised coordinates) of random rigid moves."""
    n_angles = 1 if nd == 2 else 3
    u = draw.uniform(n_angles + nd).float()
    ang = (u[:, :n_angles] * 2 - 1) * degrees * math.pi / 180
    shift = (u[:, n_angles:] * 2 - 1) * translation
    # voxels → normalised [-1, 1] units; affine_grid orders the coordinates (x, y[, z]) = last dim first
    sizes = torch.tensor(list(reversed(spatial)), dtype=torch.float32, device=device)
    t = shift * 2 / sizes
    if nd == 2:
        c, s = torch.cos(ang[:, 0]), torch.sin(ang[:, 0])
        rot = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)
    else:
        rot = torch.eye(3, device=device).expand(b, 3, 3)
        for i, (p, q) in enumerate(((1, 2), (0, 2), (0, 1))):
            c, s = torch.cos(ang[:, i]), torch.sin(ang[:, i])
            r = torch.eye(3, device=device).repeat(b, 1, 1)
            r[:, p, p], r[:, p, q], r[:, q, p], r[:, q, q] = c, -s, s, c
            rot = rot @ r
    return torch.cat([rot, t[:, :, None]], dim=2)


FUNCTIONS_ARTEFACTS: dict[str, Any] = {
    "black_corner": black_corner, "stain_deposit": stain_deposit, "bubble": bubble,
    "bias_field": bias_field, "ghosting": ghosting, "spike": spike, "mri_motion": mri_motion,
}
