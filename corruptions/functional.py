"""The corruption functions: noise, blur, intensity and digital (MedMNIST-C / ImageNet-C).

Every function here has the signature ``fn(x, param, draw, scale) -> Tensor`` where

* ``x`` is ``[B, C, H, W]`` or ``[B, C, D, H, W]`` float in ``[0, 1]`` (the spec maps the data's
  bounds to ``[0, 1]`` and back, and clamps the result),
* ``param`` is the corruption's parameter at one severity (a number or a tuple, see each
  docstring; the per-severity values live in :mod:`corruptions.suites`),
* ``draw`` is a :class:`corruptions.draw.Draw` (the only source of randomness),
* ``scale`` is the image's spatial size over the size the parameters were published for
  (MedMNIST-C: 224 px): lengths in pixels (kernel sizes, radii, blur σ) are multiplied by it,
  so a corruption means the same physical degradation at 28 px as at 224 px.

The targets (labels, masks, points, boxes) are never touched: none of these functions moves
the image content (zoom blur averages zoomed copies *with* the original, the object stays where
it is). Geometric corruptions (elastic, rotation, crop, translation) are left out of the
family: they would have to move the targets with the image.

Definitions follow the published sources (cited per function): Di Salvo et al. 2024,
"MedMNIST-C: Comprehensive benchmark and improved classifier robustness by simulating realistic
image corruptions" (its corruption registry), and Hendrycks & Dietterich 2019, "Benchmarking
neural network robustness to common corruptions and perturbations" (ImageNet-C). They are
re-implemented on tensors (batched, on the images' device, seeded) from those definitions.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from corruptions.draw import Draw

# --------------------------------------------------------------------------- helpers


def _flat_planes(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``[B, C, *S]`` → ``[B, C·D, H, W]`` (volumes: in-plane, slice by slice) and the shape."""
    if x.ndim == 4:
        return x, tuple(x.shape)
    return x.reshape(x.shape[0], -1, *x.shape[-2:]), tuple(x.shape)


def _pad_mode(size: int, pad: int) -> str:
    """Reflect-101 padding (OpenCV's and torchvision's default) where the image is large
    enough, edge replication otherwise."""
    return "reflect" if pad < size else "replicate"


def _gaussian_taps(half: int, sigma: float, device: torch.device) -> Tensor:
    """``[2·half+1]`` normalised Gaussian taps at integer offsets (σ ≤ 0: a delta)."""
    t = torch.arange(-half, half + 1, dtype=torch.float64, device=device)
    if sigma <= 0:
        return (t == 0).double()
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def separable_blur(x: Tensor, taps: Tensor) -> Tensor:
    """Correlate every spatial dim of ``x`` (``[B, C, *S]``) with the 1-D ``taps`` (odd
    length), reflect-101 padding; 2-D and 3-D alike."""
    half = (taps.numel() - 1) // 2
    if half == 0:
        return x
    b, c, *s = x.shape
    n = len(s)
    y = x.reshape(b * c, 1, *s)
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    for d in range(n):
        shape = [1, 1] + [1] * n
        shape[2 + d] = taps.numel()
        kernel = taps.to(y.dtype).reshape(shape)
        pad = [0, 0] * n
        # F.pad lists pads from the last dim backwards
        pad[2 * (n - 1 - d)] = pad[2 * (n - 1 - d) + 1] = half
        y = conv(F.pad(y, pad, mode=_pad_mode(s[d], half)), kernel)
    return y.reshape(b, c, *s)


def _conv_planes(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate each 2-D plane of ``x`` with ``kernel`` (``[kh, kw]``, odd), reflect-101."""
    planes, shape = _flat_planes(x)
    b, c, h, w = planes.shape
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    y = planes.reshape(b * c, 1, h, w)
    mode = _pad_mode(min(h, w), max(ph, pw))
    y = F.conv2d(F.pad(y, [pw, pw, ph, ph], mode=mode), kernel.to(y.dtype)[None, None])
    return y.reshape(shape)


# --------------------------------------------------------------------------- noise


def gaussian_noise(x: Tensor, std: float, draw: Draw, scale: float) -> Tensor:
    """Additive Gaussian noise ``x + N(0, std²)`` per pixel and channel (MedMNIST-C /
    ImageNet-C ``gaussian_noise``; ``std`` in ``[0, 1]`` intensity units)."""
    return x + float(std) * draw.normal(*x.shape[1:], dtype=x.dtype)


def speckle_noise(x: Tensor, std: float, draw: Draw, scale: float) -> Tensor:
    """Multiplicative speckle ``x + x·N(0, std²)`` (MedMNIST-C ``speckle_noise``)."""
    return x + x * float(std) * draw.normal(*x.shape[1:], dtype=x.dtype)


def impulse_noise(x: Tensor, amount: float, draw: Draw, scale: float) -> Tensor:
    """Salt-and-pepper noise: each pixel *value* (every channel on its own, as scikit-image's
    ``random_noise(mode="s&p")`` that MedMNIST-C and ImageNet-C call) is replaced with
    probability ``amount``, by 1 or 0 with equal probability."""
    flip = draw.uniform(*x.shape[1:], dtype=x.dtype) < float(amount)
    salt = draw.uniform(*x.shape[1:], dtype=x.dtype) < 0.5
    return torch.where(flip, salt.to(x.dtype), x)


def shot_noise(x: Tensor, photons: float, draw: Draw, scale: float) -> Tensor:
    """Poisson (shot) noise ``Poisson(x·λ)/λ`` with ``λ = photons`` (MedMNIST-C / ImageNet-C
    ``shot_noise``: fewer photons, more noise)."""
    lam = float(photons)
    return draw.poisson((x.clamp(0, 1) * lam).float()).to(x.dtype) / lam


# --------------------------------------------------------------------------- blur


def gaussian_blur(x: Tensor, kernel_size: int, draw: Draw, scale: float) -> Tensor:
    """Gaussian blur with torchvision's kernel rule (MedMNIST-C ``gaussian_blur`` calls
    ``torchvision.transforms.functional.gaussian_blur(img, kernel_size)``): ``σ = 0.3·((k − 1)/2
    − 1) + 0.8``, taps at ``−(k−1)/2 … (k−1)/2``, reflect padding; separable, 2-D and 3-D.
    At ``scale ≠ 1`` σ and the half-width are scaled (half-width rounded up)."""
    k = int(kernel_size)
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    half = (k - 1) // 2
    if scale != 1.0:
        sigma, half = sigma * scale, max(1, math.ceil(half * scale))
    return separable_blur(x, _gaussian_taps(half, sigma, x.device))


def defocus_kernel(radius: float, alias_blur: float, scale: float = 1.0,
                   device: torch.device | str = "cpu") -> Tensor:
    """ImageNet-C's / MedMNIST-C's defocus kernel: a normalised disk of ``radius`` on the grid
    ``−8…8`` (``−r…r`` when ``r > 8``), smoothed by a Gaussian of σ ``alias_blur`` (3×3; 5×5
    for ``r > 8``, reflect-101 borders as OpenCV's ``GaussianBlur``). ``scale`` shrinks radius
    and σ (the grid then spans ``±(⌈r⌉ + 1)``)."""
    r, a = float(radius) * scale, float(alias_blur) * scale
    if scale == 1.0:
        half = 8 if r <= 8 else int(r)
    else:
        half = max(1, math.ceil(r) + 1)
    ks = 3 if float(radius) <= 8 else 5
    t = torch.arange(-half, half + 1, dtype=torch.float64, device=device)
    disk = ((t[None, :] ** 2 + t[:, None] ** 2) <= r ** 2).double()
    if disk.sum() == 0:
        disk[half, half] = 1.0
    disk = disk / disk.sum()
    taps = _gaussian_taps(ks // 2, a, torch.device(device))
    pad = ks // 2
    y = disk[None, None]
    mode = _pad_mode(disk.shape[-1], pad)
    y = F.conv2d(F.pad(y, [pad, pad, 0, 0], mode=mode), taps.reshape(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, [0, 0, pad, pad], mode=mode), taps.reshape(1, 1, -1, 1))
    return y[0, 0]


def defocus_blur(x: Tensor, param: tuple[float, float], draw: Draw, scale: float) -> Tensor:
    """Defocus blur (MedMNIST-C / ImageNet-C ``defocus_blur``): correlation with
    :func:`defocus_kernel` ``(radius, alias_blur)``, reflect-101 borders (OpenCV's
    ``filter2D``); volumes in-plane."""
    radius, alias = param
    return _conv_planes(x, defocus_kernel(radius, alias, scale, x.device))


def motion_blur(x: Tensor, param: tuple[float, float], draw: Draw, scale: float) -> Tensor:
    """Motion blur as ImageMagick's ``MotionBlurImage`` (which MedMNIST-C and ImageNet-C call
    through Wand): a one-sided line of ``2·⌈radius⌉ + 1`` taps weighted ``exp(−i²/2σ²)``,
    ``i = 0, 1, …``, along a direction drawn per image uniformly in ``[−45°, 45°]`` (MedMNIST-C's
    range), integer pixel offsets ``(round(i·cos θ), round(i·sin θ))``, edge pixels repeated.
    ``param = (radius, sigma)``; volumes in-plane."""
    radius, sigma = float(param[0]) * scale, float(param[1]) * scale
    planes, shape = _flat_planes(x)
    b, c, h, w = planes.shape
    width = int(2 * math.ceil(radius) + 1) if radius > 0 else 1
    i = torch.arange(width, dtype=torch.float64, device=x.device)
    taps = torch.exp(-(i ** 2) / (2 * sigma ** 2)) if sigma > 0 else (i == 0).double()
    taps = (taps / taps.sum()).to(x.dtype)
    theta = (draw.uniform(dtype=torch.float64) * 90.0 - 45.0) * math.pi / 180.0  # [B]
    dx = torch.round(i[None, :] * torch.cos(theta)[:, None]).long()  # [B, width]
    dy = torch.round(i[None, :] * torch.sin(theta)[:, None]).long()
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    out = torch.zeros_like(planes)
    flat = planes.reshape(b, c, h * w)
    for k in range(width):
        r = (rows[None, :] + dy[:, k:k + 1]).clamp_(0, h - 1)  # [B, H]
        q = (cols[None, :] + dx[:, k:k + 1]).clamp_(0, w - 1)  # [B, W]
        index = (r[:, :, None] * w + q[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
        out += taps[k] * torch.gather(flat, 2, index).reshape(b, c, h, w)
    return out.reshape(shape)


def zoom_blur(x: Tensor, zooms: tuple[float, ...], draw: Draw, scale: float) -> Tensor:
    """Zoom blur (MedMNIST-C / ImageNet-C ``zoom_blur``): the mean of the image and its centre
    crops of size ``⌈n/z⌉`` zoomed back by ``z`` (linear interpolation, corner-aligned as
    SciPy's ``zoom``) and trimmed to the centre, for every ``z`` in ``zooms``; volumes in-plane.
    The content is not moved: every copy shares the image centre."""
    planes, shape = _flat_planes(x)
    h, w = planes.shape[-2:]
    acc = planes.clone()
    for z in zooms:
        z = float(z)
        ch, cw = math.ceil(h / z), math.ceil(w / z)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = planes[..., top:top + ch, left:left + cw]
        oh, ow = max(h, round(ch * z)), max(w, round(cw * z))
        up = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
        th, tw = (oh - h) // 2, (ow - w) // 2
        acc += up[..., th:th + h, tw:tw + w]
    return (acc / (len(zooms) + 1)).reshape(shape)


# --------------------------------------------------------------------------- intensity


def brightness(x: Tensor, factor: float, draw: Draw, scale: float) -> Tensor:
    """Brightness as PIL's ``ImageEnhance.Brightness`` (MedMNIST-C ``brightness_up/down``): a
    blend with black, ``factor·x``."""
    return x * float(factor)


def _luminance(x: Tensor) -> Tensor:
    """``[B]``: the mean grey level PIL's ``ImageEnhance.Contrast`` blends towards — the mean
    of ITU-R 601 luma for RGB (PIL's ``convert("L")``), of all values otherwise (volumes)."""
    if x.ndim == 4 and x.shape[1] == 3:
        wts = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        return (x * wts.reshape(1, 3, 1, 1)).sum(1).flatten(1).mean(1)
    return x.flatten(1).mean(1)


def contrast(x: Tensor, factor: float, draw: Draw, scale: float) -> Tensor:
    """Contrast as PIL's ``ImageEnhance.Contrast`` (MedMNIST-C ``contrast_up/down``): a blend
    with the image's mean grey level ``m``, ``m + factor·(x − m)``."""
    m = _luminance(x).reshape(-1, *([1] * (x.ndim - 1)))
    return m + float(factor) * (x - m)


def gamma(x: Tensor, g: float, draw: Draw, scale: float) -> Tensor:
    """Gamma ``x^g`` (gain 1), as torchvision's ``adjust_gamma`` that MedMNIST-C's
    ``gamma_corr_up/down`` call (``g > 1`` darkens, ``g < 1`` brightens)."""
    return x.clamp(0, 1).pow(float(g))


def saturate(x: Tensor, delta: float, draw: Draw, scale: float) -> Tensor:
    """Saturation shift (MedMNIST-C ``saturate``): in HSV, ``s ← clip(s + delta, 0, 1)``, hue
    and value kept (scikit-image's convention: a grey pixel has hue 0, so it turns red). RGB
    (3 channels, 2-D) only. Done without leaving RGB: every channel moves towards the value
    ``v = max`` so that the minimum becomes ``v·(1 − s')``."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"saturate needs RGB images [B, 3, H, W], got shape {tuple(x.shape)}")
    v = x.amax(1, keepdim=True)
    mn = x.amin(1, keepdim=True)
    s = torch.where(v > 0, (v - mn) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s + float(delta)).clamp(0, 1)
    grey = s <= 0
    ratio = torch.where(grey, torch.zeros_like(s), s_new / s.clamp_min(1e-12))
    out = v - (v - x) * ratio
    red = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(grey, red, out)


# --------------------------------------------------------------------------- digital


def box_resample_matrix(n_in: int, n_out: int, device: torch.device | str = "cpu") -> Tensor:
    """``[n_out, n_in]``: PIL's ``BOX`` resampling weights along one axis, as PIL's
    ``precompute_coeffs`` with its box filter (1 on ``(−0.5, 0.5]``): the mean of the input
    pixels within the output pixel's scaled box when shrinking, nearest when enlarging."""
    return _box_matrix(int(n_in), int(n_out)).to(device)


@functools.lru_cache(maxsize=64)
def _box_matrix(n_in: int, n_out: int) -> Tensor:
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    sc = n_in / n_out
    fs = max(sc, 1.0)
    support = 0.5 * fs
    for o in range(n_out):
        center = (o + 0.5) * sc
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            u = (j - center + 0.5) / fs
            if -0.5 < u <= 0.5:
                m[o, j] = 1.0
        if m[o].sum() > 0:
            m[o] /= m[o].sum()
    return m


def pixelate(x: Tensor, factor: float, draw: Draw, scale: float) -> Tensor:
    """Pixelation (MedMNIST-C / ImageNet-C ``pixelate``): PIL ``BOX`` resize to
    ``int(size·factor)`` and back; volumes in-plane."""
    planes, shape = _flat_planes(x)
    h, w = planes.shape[-2:]
    sh, sw = max(1, int(h * float(factor))), max(1, int(w * float(factor)))
    mh = box_resample_matrix(sh, h, x.device) @ box_resample_matrix(h, sh, x.device)
    mw = box_resample_matrix(sw, w, x.device) @ box_resample_matrix(w, sw, x.device)
    out = torch.einsum("ij,bcjk,lk->bcil", mh.to(x.dtype), planes, mw.to(x.dtype))
    return out.reshape(shape)


def jpeg_compression(x: Tensor, quality: int, draw: Draw, scale: float) -> Tensor:
    """JPEG compression at ``quality`` (MedMNIST-C / ImageNet-C ``jpeg_compression``):
    8-bit quantisation, libjpeg encode + decode through ``torchvision.io`` (on the CPU, image
    by image; grey or RGB, 2-D only)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg_compression needs 2-D grey or RGB images [B, 1|3, H, W], got {tuple(x.shape)}")
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    coded = encode_jpeg(list(u8), quality=int(quality))
    out = torch.stack([decode_jpeg(c) for c in coded]).to(x.device)
    if out.shape[1] != x.shape[1]:  # a grey JPEG decoded as RGB or the reverse
        out = out[:, :1] if x.shape[1] == 1 else out.expand(-1, 3, -1, -1)
    return out.to(x.dtype) / 255.0


FUNCTIONS_BASIC: dict[str, Any] = {
    "gaussian_noise": gaussian_noise, "speckle_noise": speckle_noise,
    "impulse_noise": impulse_noise, "shot_noise": shot_noise,
    "gaussian_blur": gaussian_blur, "defocus_blur": defocus_blur, "motion_blur": motion_blur,
    "zoom_blur": zoom_blur, "brightness": brightness, "contrast": contrast, "gamma": gamma,
    "saturate": saturate, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}
