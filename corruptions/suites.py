"""Named corruption suites per modality: ``corruption_suite("dermoscopy")``.

The 2-D suites follow MedMNIST-C's registry (Di Salvo et al. 2024, "MedMNIST-C:
Comprehensive benchmark and improved classifier robustness by simulating realistic image
corruptions"; the ``medmnistc`` package, ``CORRUPTIONS_DS``): the corruptions it chose for the
MedMNIST dataset of that modality and their parameters at severities 1–5, given for 224×224
images (``reference_size=224``: lengths scale with the image). The volume suites follow TorchIO
(Pérez-García et al. 2021) for the MRI artefacts. Per severity 1 → 5:

dermoscopy (PH2, ISIC) — MedMNIST-C ``dermamnist``
    pixelate factor 0.7, 0.5, 0.4, 0.3, 0.25 · jpeg_compression quality 30, 20, 15, 10, 7 ·
    gaussian_noise σ 0.04, 0.08, 0.12, 0.18, 0.26 · speckle_noise σ 0.05, 0.15, 0.2, 0.35, 0.45 ·
    impulse_noise amount 0.01, 0.03, 0.06, 0.09, 0.17 · shot_noise photons 60, 25, 18, 10, 5 ·
    defocus_blur (radius, alias) (4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5) ·
    motion_blur (radius, σ) (10, 5), (15, 5), (15, 8), (15, 12), (20, 15) · zoom_blur zooms
    1…1.10 step 0.01, 1…1.15 step 0.01, 1…1.20 step 0.02, 1…1.25 step 0.02, 1…1.30 step 0.03 ·
    brightness_up 1.1, 1.2, 1.3, 1.4, 1.5 · brightness_down 0.9, 0.8, 0.7, 0.6, 0.5 ·
    contrast_up 1.1, 1.2, 1.3, 1.4, 1.6 · contrast_down 0.8, 0.7, 0.6, 0.5, 0.4 ·
    black_corner radius multiplier 1.10, 1.05, 1.00, 0.95, 0.90 (MedMNIST-C lists 0.90 at
    severity 4 and 0.95 at 5; we order them so that severity 5 is the strongest).
    Left out: ``characters`` (rendered text; see :mod:`corruptions.artefacts`).
chest_xray (PneumoniaMNIST) — MedMNIST-C ``pneumoniamnist``
    pixelate 0.8, 0.7, 0.6, 0.5, 0.4 · jpeg_compression 50, 30, 15, 10, 7 · gaussian_noise
    0.04, 0.05, 0.06, 0.07, 0.08 · speckle_noise 0.05, 0.07, 0.10, 0.15, 0.20 · impulse_noise
    0.005, 0.01, 0.013, 0.017, 0.02 · shot_noise 300, 200, 150, 100, 80 · gaussian_blur kernel
    3, 5, 7, 9, 11 · brightness_up/down as dermoscopy · contrast_up 1.1, 1.2, 1.3, 1.4, 1.6 ·
    contrast_down 0.9, 0.8, 0.7, 0.6, 0.4 · gamma_up 1.1, 1.2, 1.3, 1.4, 1.6 · gamma_down
    0.9, 0.8, 0.7, 0.6, 0.4.
xray (cephalometric, dental X-ray) — MedMNIST-C ``chestmnist`` (no MedMNIST-C dataset is
    cephalometric or dental; these are its other radiograph's values)
    pixelate 0.30, 0.25, 0.20, 0.15, 0.10 · jpeg_compression 50, 30, 15, 10, 7 · gaussian_noise
    0.04, 0.08, 0.12, 0.18, 0.26 · speckle_noise 0.05, 0.15, 0.2, 0.35, 0.45 · impulse_noise
    0.01, 0.03, 0.06, 0.09, 0.17 · shot_noise 60, 25, 18, 10, 5 · gaussian_blur 3, 5, 7, 9, 11 ·
    brightness, contrast and gamma as chest_xray.
retina (fundus) — MedMNIST-C ``retinamnist``
    pixelate 0.8, 0.6, 0.5, 0.4, 0.35 · jpeg_compression 30, 25, 20, 10, 5 · gaussian_noise
    0.04, 0.08, 0.12, 0.16, 0.20 · speckle_noise 0.10, 0.15, 0.20, 0.25, 0.30 · defocus_blur as
    dermoscopy · motion_blur (8, 5), (15, 5), (15, 8), (15, 12), (20, 15) · brightness_down
    0.9, 0.8, 0.7, 0.6, 0.5 · contrast_down 0.9, 0.8, 0.7, 0.6, 0.4.
microscopy (blood smears, BCCD) — MedMNIST-C ``bloodmnist``
    pixelate 0.6, 0.5, 0.4, 0.3, 0.25 · jpeg_compression 50, 30, 15, 10, 7 · defocus_blur
    (2, 0.01), (3, 0.1), (4, 0.1), (5, 0.1), (6, 0.1) · motion_blur (3, 3), (5, 5), (10, 5),
    (10, 7), (10, 9) · brightness_up 1.1, 1.2, 1.3, 1.35, 1.4 · brightness_down 0.9 … 0.5 ·
    contrast_up 1.1, 1.15, 1.2, 1.25, 1.3 · contrast_down 0.9 … 0.5 · saturate +0.05, 0.10,
    0.15, 0.17, 0.20 · stain_deposit max marks 1, 2, 3, 3, 3 (ink 24, 24, 24, 32, 42 px) ·
    bubble (max radius, max count) (5, 10), (7, 10), (10, 10), (12, 12), (15, 12).
pathology — MedMNIST-C ``pathmnist``
    pixelate 0.8, 0.6, 0.4, 0.3, 0.25 · jpeg_compression 50, 30, 15, 10, 7 · defocus_blur
    (3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3) · motion_blur (5, 5), (10, 5), (15, 5),
    (15, 8), (15, 12) · brightness_up 1.1, 1.15, 1.2, 1.22, 1.25 · brightness_down 0.85, 0.80,
    0.75, 0.72, 0.70 · contrast_up 1.1, 1.2, 1.3, 1.4, 1.6 · contrast_down 0.8, 0.7, 0.6,
    0.55, 0.5 · saturate 0.05 … 0.25 · stain_deposit 1 … 5 · bubble (7, 15), (10, 15),
    (12, 15), (15, 20), (17, 25).
ct (CT slices and volumes) — MedMNIST-C ``organamnist`` (abdominal CT), JPEG left out (2-D)
    pixelate 0.7, 0.6, 0.5, 0.4, 0.35 · gaussian_noise 0.04 … 0.20 · speckle_noise 0.05, 0.10,
    0.20, 0.30, 0.40 · impulse_noise 0.01, 0.02, 0.03, 0.05, 0.08 · shot_noise 200, 100, 50, 25,
    15 · gaussian_blur 11, 13, 15, 17, 21 · brightness_up 1.2 … 1.6 · brightness_down 0.8, 0.75,
    0.7, 0.65, 0.6 · contrast_up 1.3, 1.4, 1.6, 1.7, 1.8 · contrast_down 0.8, 0.7, 0.6, 0.55,
    0.5 · gamma_up 1.3, 1.4, 1.6, 1.8, 2.0 · gamma_down 0.9 … 0.4.
mri (MRI slices and volumes) — TorchIO's artefacts, with TorchIO's default at severity 5
    and linear below (TorchIO gives ranges, not severities): bias_field coefficient 0.1, 0.2,
    0.3, 0.4, 0.5 · ghosting (max ghosts 10, intensity 0.2, 0.4, 0.6, 0.8, 1.0) · spike
    intensity 0.2, 0.4, 0.6, 0.8, 1.0 (TorchIO's default range 1–3 starts at our severity 5) ·
    mri_motion (degrees, voxels, moves) (2, 2, 2), (4, 4, 2), (6, 6, 2), (8, 8, 2), (10, 10, 2);
    plus gaussian_noise 0.04 … 0.20 and contrast_down 0.9 … 0.4 (MedMNIST-C ``organamnist``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from corruptions.artefacts import INK_SIZES
from corruptions.spec import Corruption

__all__ = ["ALIASES", "SUITES", "CorruptionSuite", "corruption_suite"]

_MEDMNISTC = "MedMNIST-C (Di Salvo et al. 2024) CORRUPTIONS_DS['{}']"
_TORCHIO = "TorchIO (Pérez-García et al. 2021), default at severity 5, linear below"


@dataclass(frozen=True)
class CorruptionSuite:
    """A named list of corruptions with where its values come from."""

    name: str
    corruptions: tuple[Corruption, ...]
    source: str

    def __post_init__(self) -> None:
        names = [c.name for c in self.corruptions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"corruption suite {self.name!r}: names {dupes} appear twice")
        if not names:
            raise ValueError(f"corruption suite {self.name!r} is empty")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.corruptions]

    def __iter__(self):  # noqa: ANN204
        return iter(self.corruptions)

    def __len__(self) -> int:
        return len(self.corruptions)

    def describe(self) -> dict[str, Any]:
        return {"suite": self.name, "source": self.source,
                "corruptions": [c.describe() for c in self.corruptions]}


def _zooms(stop: float, step: float) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in np.arange(1, stop, step))


def _stains(max_marks: Sequence[int]) -> tuple[tuple[int, int], ...]:
    return tuple((int(m), INK_SIZES[i]) for i, m in enumerate(max_marks))


@dataclass(frozen=True)
class _From:
    """A table entry whose source (and reference size) is not its suite's."""

    params: tuple[Any, ...]
    source: str
    reference_size: int | None = 224


_UP = (1.1, 1.2, 1.3, 1.4, 1.5)
_DOWN = (0.9, 0.8, 0.7, 0.6, 0.5)
_DOWN_04 = (0.9, 0.8, 0.7, 0.6, 0.4)
_UP_16 = (1.1, 1.2, 1.3, 1.4, 1.6)
_DEFOCUS = ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5))
_JPEG = (50, 30, 15, 10, 7)
_NOISE = (0.04, 0.08, 0.12, 0.16, 0.20)
_RADIOGRAPH = {"gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26), "speckle_noise": (0.05, 0.15, 0.2, 0.35, 0.45),
               "impulse_noise": (0.01, 0.03, 0.06, 0.09, 0.17), "shot_noise": (60, 25, 18, 10, 5)}

#: each suite: the MedMNIST-C dataset its values come from (``None``: TorchIO's, lengths not
#: scaled), and where the suite as a whole comes from
_SUITES: dict[str, tuple[str | None, str]] = {
    "dermoscopy": ("dermamnist", _MEDMNISTC.format("dermamnist")),
    "chest_xray": ("pneumoniamnist", _MEDMNISTC.format("pneumoniamnist")),
    "xray": ("chestmnist", _MEDMNISTC.format("chestmnist")),
    "retina": ("retinamnist", _MEDMNISTC.format("retinamnist")),
    "microscopy": ("bloodmnist", _MEDMNISTC.format("bloodmnist")),
    "pathology": ("pathmnist", _MEDMNISTC.format("pathmnist")),
    "ct": ("organamnist", _MEDMNISTC.format("organamnist")),
    "mri": (None, "TorchIO (Pérez-García et al. 2021) + MedMNIST-C organamnist"),
}

#: corruption → {suite: its parameters at severities 1–5}, in the order the suites list them
#: (the module docstring gives the same values per suite)
_TABLE: dict[str, dict[str, Any]] = {
    "bias_field": {"mri": (0.1, 0.2, 0.3, 0.4, 0.5)},
    "ghosting": {"mri": tuple((10, v) for v in (0.2, 0.4, 0.6, 0.8, 1.0))},
    "spike": {"mri": (0.2, 0.4, 0.6, 0.8, 1.0)},
    "mri_motion": {"mri": tuple((d, d, 2) for d in (2, 4, 6, 8, 10))},
    "pixelate": {"dermoscopy": (0.7, 0.5, 0.4, 0.3, 0.25), "chest_xray": (0.8, 0.7, 0.6, 0.5, 0.4),
                 "xray": (0.30, 0.25, 0.20, 0.15, 0.10), "retina": (0.8, 0.6, 0.5, 0.4, 0.35),
                 "microscopy": (0.6, 0.5, 0.4, 0.3, 0.25), "pathology": (0.8, 0.6, 0.4, 0.3, 0.25),
                 "ct": (0.7, 0.6, 0.5, 0.40, 0.35)},
    "jpeg_compression": {"dermoscopy": (30, 20, 15, 10, 7), "chest_xray": _JPEG, "xray": _JPEG,
                         "retina": (30, 25, 20, 10, 5), "microscopy": _JPEG, "pathology": _JPEG},
    "gaussian_noise": {"dermoscopy": _RADIOGRAPH["gaussian_noise"], "chest_xray": (0.04, 0.05, 0.06, 0.07, 0.08),
                       "xray": _RADIOGRAPH["gaussian_noise"], "retina": _NOISE, "ct": _NOISE,
                       "mri": _From(_NOISE, _MEDMNISTC.format("organamnist"))},
    "speckle_noise": {"dermoscopy": _RADIOGRAPH["speckle_noise"], "chest_xray": (0.05, 0.07, 0.10, 0.15, 0.20),
                      "xray": _RADIOGRAPH["speckle_noise"], "retina": (0.10, 0.15, 0.20, 0.25, 0.30),
                      "ct": (0.05, 0.10, 0.20, 0.30, 0.40)},
    "impulse_noise": {"dermoscopy": _RADIOGRAPH["impulse_noise"], "chest_xray": (0.005, 0.01, 0.013, 0.017, 0.02),
                      "xray": _RADIOGRAPH["impulse_noise"], "ct": (0.01, 0.02, 0.03, 0.05, 0.08)},
    "shot_noise": {"dermoscopy": _RADIOGRAPH["shot_noise"], "chest_xray": (300, 200, 150, 100, 80),
                   "xray": _RADIOGRAPH["shot_noise"], "ct": (200, 100, 50, 25, 15)},
    "defocus_blur": {"dermoscopy": _DEFOCUS, "retina": _DEFOCUS,
                     "microscopy": ((2, 0.01), (3, 0.1), (4, 0.1), (5, 0.1), (6, 0.1)),
                     "pathology": ((3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3))},
    "motion_blur": {"dermoscopy": ((10, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
                    "retina": ((8, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
                    "microscopy": ((3, 3), (5, 5), (10, 5), (10, 7), (10, 9)),
                    "pathology": ((5, 5), (10, 5), (15, 5), (15, 8), (15, 12))},
    "zoom_blur": {"dermoscopy": (_zooms(1.11, 0.01), _zooms(1.16, 0.01), _zooms(1.21, 0.02),
                                 _zooms(1.26, 0.02), _zooms(1.31, 0.03))},
    "gaussian_blur": {"chest_xray": (3, 5, 7, 9, 11), "xray": (3, 5, 7, 9, 11), "ct": (11, 13, 15, 17, 21)},
    "brightness_up": {"dermoscopy": _UP, "chest_xray": _UP, "xray": _UP, "microscopy": (1.1, 1.2, 1.3, 1.35, 1.4),
                      "pathology": (1.1, 1.15, 1.2, 1.22, 1.25), "ct": (1.2, 1.3, 1.4, 1.5, 1.6)},
    "brightness_down": {"dermoscopy": _DOWN, "chest_xray": _DOWN, "xray": _DOWN, "retina": _DOWN, "microscopy": _DOWN,
                        "pathology": (0.85, 0.80, 0.75, 0.72, 0.70), "ct": (0.8, 0.75, 0.7, 0.65, 0.60)},
    "contrast_up": {"dermoscopy": _UP_16, "chest_xray": _UP_16, "xray": _UP_16, "microscopy": (1.1, 1.15, 1.2, 1.25, 1.3),
                    "pathology": _UP_16, "ct": (1.3, 1.4, 1.6, 1.7, 1.8)},
    "contrast_down": {"dermoscopy": (0.8, 0.7, 0.6, 0.5, 0.4), "chest_xray": _DOWN_04, "xray": _DOWN_04,
                      "retina": _DOWN_04, "microscopy": _DOWN, "pathology": (0.8, 0.7, 0.6, 0.55, 0.5),
                      "ct": (0.8, 0.7, 0.6, 0.55, 0.5), "mri": _From(_DOWN_04, _MEDMNISTC.format("chestmnist"))},
    "gamma_up": {"chest_xray": _UP_16, "xray": _UP_16, "ct": (1.3, 1.4, 1.6, 1.8, 2.0)},
    "gamma_down": {"chest_xray": _DOWN_04, "xray": _DOWN_04, "ct": _DOWN_04},
    "black_corner": {"dermoscopy": _From((1.10, 1.05, 1.00, 0.95, 0.90),
                                         _MEDMNISTC.format("dermamnist") + " (severities 4 and 5 swapped)")},
    "saturate": {"microscopy": (0.05, 0.10, 0.15, 0.17, 0.20), "pathology": (0.05, 0.10, 0.15, 0.20, 0.25)},
    "stain_deposit": {"microscopy": _stains((1, 2, 3, 3, 3)), "pathology": _stains((1, 2, 3, 4, 5))},
    "bubble": {"microscopy": ((5, 10), (7, 10), (10, 10), (12, 12), (15, 12)),
               "pathology": ((7, 15), (10, 15), (12, 15), (15, 20), (17, 25))},
}
#: the kind (function) of the corruptions whose name says a direction
_KINDS = {f"{k}_{d}": k for k in ("brightness", "contrast", "gamma") for d in ("up", "down")}


def _corruptions(suite: str) -> tuple[Corruption, ...]:
    """The suite's rows of :data:`_TABLE`, in table order."""
    dataset = _SUITES[suite][0]
    source, size = (_MEDMNISTC.format(dataset), 224) if dataset else (_TORCHIO, None)
    out = []
    for name, row in _TABLE.items():
        if suite in row:
            e = row[suite] if isinstance(row[suite], _From) else _From(tuple(row[suite]), source, size)
            out.append(Corruption(name, _KINDS.get(name, name), tuple(e.params), e.reference_size, e.source))
    return tuple(out)


#: suite names
SUITES = tuple(_SUITES)
#: other names of the suites (datasets and modalities)
ALIASES = {
    "ph2": "dermoscopy", "isic": "dermoscopy", "dermamnist": "dermoscopy", "skin": "dermoscopy",
    "pneumoniamnist": "chest_xray", "chest": "chest_xray", "chestmnist": "xray",
    "cephalometric": "xray", "dental": "xray", "fundus": "retina", "retinamnist": "retina",
    "bccd": "microscopy", "blood": "microscopy", "bloodmnist": "microscopy", "pathmnist": "pathology",
    "organamnist": "ct", "volume": "mri",
}


def corruption_suite(value: str | Sequence[Mapping[str, Any] | Corruption] | CorruptionSuite,
                     where: str = "corruptions") -> CorruptionSuite:
    """A suite by name (or alias), or a custom list of corruptions (``{name, kind?, params,
    reference_size?}`` each); errors name ``where`` and list the known suites."""
    if isinstance(value, CorruptionSuite):
        return value
    if isinstance(value, str):
        key = ALIASES.get(value.lower(), value.lower())
        if key not in _SUITES:
            import difflib

            near = difflib.get_close_matches(value.lower(), [*SUITES, *ALIASES], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"{where}: unknown corruption suite {value!r}{hint}; known: {list(SUITES)} "
                             f"and aliases {sorted(ALIASES)}")
        return CorruptionSuite(key, _corruptions(key), _SUITES[key][1])
    if isinstance(value, Sequence):
        items = tuple(Corruption.from_config(v, f"{where}[{i}]") for i, v in enumerate(value))
        return CorruptionSuite("custom", items, "custom")
    raise ValueError(f"{where}: a corruption suite is a name ({list(SUITES)}) or a list of corruptions, "
                     f"got {value!r}")
