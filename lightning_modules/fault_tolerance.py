"""What a task module adds to Lightning so that a killed run resumes where it stopped.

Lightning 2.6 checkpoints hold the weights and buffers (``state_dict``: AMAT's margins and
threshold, the denoiser…), the optimizer and LR-scheduler states, the loop progress (epoch,
global step, batches done in the current epoch), callback states and the hyperparameters. They
do *not* hold the global random number generators, nor a method's half-finished epoch (AMAT's
margin records of the batches already trained in the epoch). :func:`save_extra_state` adds both
under ``checkpoint["medrobust"]``, as plain tensors and numbers so the file still loads with
``torch.load(..., weights_only=True)``; :func:`restore_rng_at_train_start` puts the generators
back when training starts (after Lightning's restore, before the first resumed batch).

It also holds the training step's non-finite guard (:func:`guarded_training_loss`): a NaN/Inf image
or loss is an error naming the batch's sample ``index`` values, unless the task module was built
with ``nonfinite="skip"``; its :class:`SkipNonFinite` policy then counts and warns, and the
module logs the count as ``train/nonfinite_skipped``. The count is part of the module's
checkpoint (``checkpoint["medrobust"]["nonfinite"]``), so it survives a resume.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_modules.distributed import any_rank

log = logging.getLogger(__name__)

#: key of medrobust's own entry in a Lightning checkpoint dict
CHECKPOINT_KEY = "medrobust"

#: what a training step does with a NaN / Inf image or loss (the task module's ``nonfinite``)
NonFiniteMode = Literal["error", "skip"]


class NonFiniteError(FloatingPointError):
    """A training step met a NaN / Inf input or loss."""


class SkipNonFinite:
    """The ``nonfinite="skip"`` policy: count and warn about each skipped training batch.

    Args:
        max_skipped: raise :class:`NonFiniteError` once more than this many batches were
            skipped in the whole run (``None``: never), so a diverged run (not a few bad
            files) still stops.
    """

    def __init__(self, max_skipped: int | None = None) -> None:
        if max_skipped is not None and (isinstance(max_skipped, bool) or int(max_skipped) < 0):
            raise ValueError(f"max_nonfinite_skips must be None or an int >= 0, got {max_skipped!r}")
        self.max_skipped = None if max_skipped is None else int(max_skipped)
        self.skipped = 0
        self.skipped_indices: list[int] = []

    def skip(self, reason: str, indices: list[int]) -> None:
        """Count one skipped batch whose samples are ``indices`` (on every rank)."""
        self.skipped += 1
        self.skipped_indices.extend(indices)
        if self.max_skipped is not None and self.skipped > self.max_skipped:
            raise NonFiniteError(
                f"SkipNonFinite: {self.skipped} non-finite training batches skipped, more than "
                f"max_skipped={self.max_skipped}; the last: {reason}"
            )
        log.warning("skipping a training batch (%d skipped so far): %s", self.skipped, reason)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "skipped_indices": list(self.skipped_indices)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.skipped_indices = [int(i) for i in state_dict.get("skipped_indices", [])]


def nonfinite_policy(mode: str, max_skipped: int | None, owner: str) -> SkipNonFinite | None:
    """The policy for the task module option ``nonfinite`` (``None``: a non-finite step is an
    error)."""
    if mode == "error":
        if max_skipped is not None:
            raise ValueError(f"{owner}.max_nonfinite_skips needs nonfinite='skip', got nonfinite='error'")
        return None
    if mode == "skip":
        return SkipNonFinite(max_skipped)
    raise ValueError(f"{owner}.nonfinite must be 'error' or 'skip', got {mode!r}")


# ---------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The global generators (torch CPU, CUDA, numpy, Python ``random``) as plain values:
    tensors, ints, floats, strings and lists only, so ``weights_only=True`` loads them."""
    # the legacy global numpy generator is what albumentations and user code draw from
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npy = state["numpy"]
    legacy = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
              npy["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ---------------------------------------------------------------------- checkpoint hooks
def save_extra_state(task: Any, checkpoint: dict[str, Any]) -> None:
    """``LightningModule.on_save_checkpoint``: add the RNG states (of this rank), whether the
    epoch's end-of-epoch method hook already ran, and the method's in-epoch state."""
    checkpoint[CHECKPOINT_KEY] = {
        "rng": rng_state(),
        "epoch_closed": bool(task._epoch_closed),
        "method_epoch_state": task.method.epoch_state(),
    }
    if task.nonfinite_policy is not None:
        checkpoint[CHECKPOINT_KEY]["nonfinite"] = task.nonfinite_policy.state_dict()


def load_extra_state(task: Any, checkpoint: dict[str, Any]) -> None:
    """``LightningModule.on_load_checkpoint``: restore the method's in-epoch state now and keep
    the RNG states for :func:`restore_rng_at_train_start`. Checkpoints without the entry (older
    ones, other tools') load as before."""
    extra = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(extra, dict):
        return
    task._epoch_closed = bool(extra.get("epoch_closed", True))
    task.method.load_epoch_state(extra.get("method_epoch_state") or {})
    task._rng_to_restore = extra.get("rng")
    if task.nonfinite_policy is not None and isinstance(extra.get("nonfinite"), dict):
        task.nonfinite_policy.load_state_dict(extra["nonfinite"])


def restore_rng_at_train_start(task: Any) -> None:
    """``on_train_start``: set the generators saved in the resumed checkpoint. Done here, not
    at load time, because Lightning runs setup hooks between loading and training that may
    draw random numbers the uninterrupted run did not draw at that point."""
    state = getattr(task, "_rng_to_restore", None)
    if state is not None:
        set_rng_state(state)
        task._rng_to_restore = None


# ---------------------------------------------------------------------- non-finite guard
def _batch_indices(batch: Any, mask: Tensor | None = None) -> list[int]:
    index = batch.get("index") if isinstance(batch, dict) else None
    if not isinstance(index, Tensor):
        return []
    index = index.reshape(-1)
    if mask is not None and mask.numel() == index.numel():
        index = index[mask.to(index.device)]
    return [int(i) for i in index.tolist()]


def nonfinite_images(batch: Any) -> Tensor | None:
    """Bool ``[B]``: samples whose ``image`` holds a NaN or ±Inf (``None``: no image tensor)."""
    image = batch.get("image") if isinstance(batch, dict) else None
    if not isinstance(image, Tensor) or not image.is_floating_point():
        return None
    return ~torch.isfinite(image.detach()).reshape(image.shape[0], -1).all(dim=1)


def _where(task: Any, batch_idx: int) -> str:
    return f"epoch {int(task.current_epoch)}, global step {int(task.global_step)}, batch_idx {batch_idx}"


def _skip_or_raise(task: Any, reason: str, indices: list[int]) -> None:
    """Hand the batch to the module's skip policy and log the count, or raise when there is
    none."""
    policy: SkipNonFinite | None = task.nonfinite_policy
    if policy is not None:
        policy.skip(reason, indices)
        task.log("train/nonfinite_skipped", float(policy.skipped), on_step=False, on_epoch=True,
                 reduce_fx="max", sync_dist=True, batch_size=1)
        return
    raise NonFiniteError(
        f"{type(task).__name__}.training_step: {reason}. Check those samples in the dataset "
        "(or lower the learning rate if the loss diverged); to skip such batches instead, set "
        "the model option nonfinite='skip' (SkipNonFinite: it counts and logs every skip)."
    )


def guarded_training_loss(task: Any, batch: Any, batch_idx: int) -> tuple[Tensor, dict[str, Any]] | None:
    """``task.method.training_loss(task, batch)`` inside the non-finite guard.

    1. Images are checked *before* any forward, so a NaN never reaches the network (its
       BatchNorm statistics), the attack or a method's per-sample records.
    2. The loss is checked after; when the skip policy drops the batch, the module's buffers
       (BatchNorm running statistics, …) are put back as they were before the step.

    Returns the method's ``(loss, logs)``, or ``None`` when the batch is skipped. Raises
    :class:`NonFiniteError` naming the sample ``index`` values when the module's ``nonfinite``
    is ``"error"``.
    Under DDP every rank takes the same decision (a one-element all-reduce per check).
    """
    bad_images = nonfinite_images(batch)
    local_bad = bool(bad_images.any()) if bad_images is not None else False
    device = batch["image"].device if isinstance(batch, dict) and isinstance(batch.get("image"), Tensor) \
        else torch.device("cpu")
    if any_rank(local_bad, device):
        if local_bad:
            indices = _batch_indices(batch, bad_images)
            reason = f"non-finite (NaN/Inf) values in batch['image'] of samples index={indices}"
        else:
            indices, reason = [], "a batch with non-finite images on another DDP rank"
        _skip_or_raise(task, f"{reason} ({_where(task, batch_idx)})", indices)
        return None
    skipping = task.nonfinite_policy is not None
    saved = [b.detach().clone() for b in task.buffers()] if skipping else None
    loss, logs = task.method.training_loss(task, batch)
    local_bad = not bool(torch.isfinite(loss.detach()).all())
    if not any_rank(local_bad, loss.device):
        return loss, logs
    if local_bad:
        indices = _batch_indices(batch)
        value = float(loss.detach().float().reshape(-1)[0]) if loss.numel() else math.nan
        reason = (f"non-finite training loss ({value}) from the {task.method.name!r} method; "
                  f"the batch holds samples index={indices}")
    else:
        indices, reason = [], "a non-finite training loss on another DDP rank"
    if saved is not None:
        with torch.no_grad():
            for buf, old in zip(task.buffers(), saved):
                buf.copy_(old)
    _skip_or_raise(task, f"{reason} ({_where(task, batch_idx)})", indices)
    return None
