"""Common corruptions and acquisition artefacts on tensors, beside the attacks.

A corruption is a seeded, batched function of the images and a severity 1–5 (0: the identity)
that leaves the targets alone; it runs on the images' device. Corruptions come in named
suites per modality (:mod:`corruptions.suites`: MedMNIST-C's registry for the 2-D modalities,
TorchIO's MRI artefacts for volumes)::

    from corruptions import corruption_suite
    suite = corruption_suite("dermoscopy")
    g = torch.Generator().manual_seed(0)
    x_c = suite.corruptions[0](x, severity=3, generator=g)      # [B, C, H, W] in [0, 1]

Nothing here knows Lightning, tasks or datasets (as :mod:`attacks`).
"""

from corruptions.augment import CorruptionAugment
from corruptions.draw import Draw
from corruptions.spec import KINDS, SEVERITIES, Corruption, CorruptionKind
from corruptions.suites import ALIASES, SUITES, CorruptionSuite, corruption_suite

__all__ = [
    "ALIASES",
    "KINDS",
    "SEVERITIES",
    "SUITES",
    "Corruption",
    "CorruptionAugment",
    "CorruptionKind",
    "CorruptionSuite",
    "Draw",
    "corruption_suite",
]
