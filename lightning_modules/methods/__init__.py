"""Training methods, written once for every task (they use only the TrainableTask protocol)."""

from lightning_modules.methods.amat import AMAT
from lightning_modules.methods.amat_margins import margin_update
from lightning_modules.methods.base import TrainingMethod
from lightning_modules.methods.clean import Clean
from lightning_modules.methods.denoise import Denoise
from lightning_modules.methods.fgsm_rs import FGSMRS
from lightning_modules.methods.gaussian_augment import GaussianAugment
from lightning_modules.methods.gradalign import GradAlign
from lightning_modules.methods.nfgsm import NFGSM
from lightning_modules.methods.sat import SAT
from lightning_modules.methods.schedules import EpsSchedule
from lightning_modules.methods.trades import TRADES

__all__ = ["AMAT", "FGSMRS", "NFGSM", "SAT", "TRADES", "Clean", "Denoise", "EpsSchedule", "GaussianAugment",
           "GradAlign", "TrainingMethod", "margin_update"]
