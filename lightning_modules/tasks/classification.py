"""Classification, model side: :class:`~lightning_modules.ClassificationModule`, the logit
suites (sequential, as AutoAttack), a sample is violated when its arg-max is wrong."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from attacks.suites import LOGIT_SUITES, SuiteRecipe
from datamodules.tasks.classification import ClassificationData
from lightning_modules.classification_module import ClassificationModule
from lightning_modules.tasks.base import AdapterRules, Task


class ClassificationRules(AdapterRules):
    """Logits ``[B, K]`` and labels ``[B]``: violated = arg-max ≠ label; metric = correct (1) /
    wrong (0)."""

    def is_violated(self, adapter: Any, output: Any, batch: Any, threshold: float | None) -> Tensor:
        if isinstance(output, Tensor):
            return output.argmax(dim=1) != self.target(batch, adapter.keys).reshape(-1).long()
        return super().is_violated(adapter, output, batch, threshold)

    def per_sample_metric(self, output: Any, target: Any) -> Tensor:
        if isinstance(output, Tensor):
            return (output.detach().argmax(dim=1) == target.reshape(-1).long()).float()
        return super().per_sample_metric(output, target)

    def default_loss_inputs(self, output: Tensor, target: Any, image: Tensor) -> tuple[Tensor, Tensor] | None:
        if output.ndim == 2:
            return output.float(), target.reshape(-1).long()
        return None

    def loss_reference(self, output: Any) -> Tensor | None:
        if isinstance(output, Tensor) and output.ndim == 2:
            return output.detach().float()
        return None


class ClassificationTask(Task, ClassificationData):
    module: ClassVar[type] = ClassificationModule
    adapter_rules: ClassVar[type[AdapterRules]] = ClassificationRules
    suite: ClassVar[SuiteRecipe | None] = LOGIT_SUITES

    def warn_unknown_classes(self) -> bool:
        return True

    def classes_of_output(self, output: Tensor) -> int:
        k = int(output.shape[1])
        return 2 if k == 1 else k  # a single logit: binary

    def module_options(self, reference: Any) -> dict[str, Any]:
        return {"binary_single_logit": True} if reference.shape[1] == 1 else {}
