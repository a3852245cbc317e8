"""Adaptive-margin adversarial training (AMAT, Ma & Liang): one L2 margin per training sample.

Each training sample ``i`` has a margin ``E[i]`` (its own adversarial budget), a buffer of this
module — so it is saved in checkpoints, restored on resume and moved with the model — and is
identical on every DDP rank.

Per batch (all samples in parallel, each inside its own ball):

1. L2 PGD with ``steps`` steps of size ``alpha·E[i]/steps`` from a random start of norm
   ``max(E[i] − δ, δ)`` (capped at ``E[i]``), ascending the task's per-sample loss, with early
   stopping: a sample stops moving at the first iterate where it *violates* — the task's
   loss-defined test (classification: misclassified; segmentation: Dice below the threshold;
   landmarks / detection: loss above it). Its final noise norm is then the norm at which the
   violation was found.
2. Loss ``(1 − β)·L(x) + β·L(x_adv)`` from one joint forward of clean and adversarial images.
3. The new margin is recorded: ``E[i] + δ`` if no violation was found and the clean prediction
   is correct, else ``(E[i] + ‖x_adv − x‖₂) / 2``; clamped to ``[0, max_margin]``.

At the end of the epoch the recorded margins are gathered from all ranks and applied, so every
rank holds the same margins. A sample seen twice in an epoch (the distributed sampler pads the
last round with repeats) keeps the record of its first occurrence in the global sample order
(position ``p`` on rank ``r`` of ``W`` is global position ``p·W + r``, the interleaving of
PyTorch's ``DistributedSampler``): the padding is at the end of that order, so the kept record
is the one 1 process would have made. The resolution is deterministic either way.

Violation threshold (tasks with ``violation_direction`` ``"above"`` / ``"below"``): ``threshold``
if given; otherwise computed at the end of every epoch from the per-sample clean violation
statistics of that epoch — gathered across ranks and de-duplicated like the margins — as a
robust centre ± z·scale: median and 1.4826·MAD (the MAD scaled to a Gaussian's σ), because a
few failed samples must not move the threshold. The median with ``threshold_z = 0`` follows Ma &
Liang ("Dice below the clean model's training mean"); ``z > 0`` tolerates more before a sample
counts as violated. These statistics come for free from the clean half of the joint forward.
Until a first value exists (first epoch) the method trains clean (a warm-up epoch) unless an
``initial_threshold`` is given. Classification needs no threshold.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.modules.batchnorm import SyncBatchNorm

from attacks import PGD, per_sample_norm
from lightning_modules.methods.base import (
    Logs,
    TrainingMethod,
    check_range,
    detach_output,
)
from lightning_modules.protocol import Batch, RobustTask

MAD_TO_SIGMA = 1.4826


def margin_update(
    margins: Tensor,
    violated: Tensor,
    clean_correct: Tensor,
    noise_norm: Tensor,
    delta: float,
    max_margin: float,
) -> Tensor:
    """AMAT's margin rule, per sample (all ``[B]``).

    Expand by ``delta`` when the attack found no violation and the clean prediction is correct;
    otherwise move halfway to the noise norm where the violation was found (or reached):
    ``(E + ‖noise‖) / 2``. Result clamped to ``[0, max_margin]``.
    """
    grow = (~violated) & clean_correct
    new = torch.where(grow, margins + delta, (margins + noise_norm.to(margins.dtype)) / 2)
    return new.clamp(0.0, max_margin)


class AMAT(TrainingMethod):
    """Adaptive-margin adversarial training (Ma & Liang), task-agnostic.

    Args:
        delta: margin step δ (L2, pixel units of ``data_info.bounds``); margins start at δ.
        max_margin: upper bound of every margin.
        steps: L2 PGD steps (paper: 20).
        alpha: step size factor: step ``alpha·E[i]/steps`` (paper: 4–5).
        beta: weight of the adversarial loss (paper: 0.5).
        threshold: fixed violation threshold (task units: Dice, loss…); ``None`` → computed.
        initial_threshold: used until the first computed value exists (skips the warm-up).
        threshold_z: ``z`` of the computed threshold ``median ± z·1.4826·MAD``.
        warmup_epochs: clean epochs at the start (statistics are still collected). A task that
            needs a threshold trains clean until one exists anyway.
        random_start: random start of norm ``max(E − δ, δ)`` (``False``: start at ``x``; makes
            the attack independent of the RNG, used by the DDP equivalence test).
        attack_bn_mode, attack_dropout_mode: module modes during the attack (see SAT).
        seed: seed of the random start (with step and rank); ``None`` = global RNG.

    Buffers: ``margins`` ``[data_info.num_train]``, ``threshold_value`` (scalar, NaN until
    computed). Logged per step: ``violated``, ``noise_norm``, ``loss_clean``, ``loss_adv``;
    per epoch: ``margin_mean`` / ``margin_median`` / ``margin_min`` / ``margin_max``,
    ``margin_grown`` (fraction of updated samples that grew) and ``threshold``.
    """

    name = "amat"

    def __init__(
        self,
        delta: float = 0.1,
        max_margin: float = 2.0,
        steps: int = 20,
        alpha: float = 4.0,
        beta: float = 0.5,
        threshold: float | None = None,
        initial_threshold: float | None = None,
        threshold_z: float = 0.0,
        warmup_epochs: int = 0,
        random_start: bool = True,
        attack_bn_mode: str = "eval",
        attack_dropout_mode: str = "eval",
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_range(owner, "delta", delta, 0.0, lo_open=True)
        check_range(owner, "max_margin", max_margin, float(delta))
        check_range(owner, "alpha", alpha, 0.0, lo_open=True)
        check_range(owner, "beta", beta, 0.0, 1.0, lo_open=True)
        check_range(owner, "warmup_epochs", warmup_epochs, 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{owner}.steps must be an int >= 1, got {steps!r}")
        self.delta, self.max_margin = float(delta), float(max_margin)
        self.steps, self.alpha, self.beta = steps, float(alpha), float(beta)
        self.threshold = None if threshold is None else float(threshold)
        self.initial_threshold = None if initial_threshold is None else float(initial_threshold)
        self.threshold_z = float(threshold_z)
        self.warmup_epochs = int(warmup_epochs)
        self.random_start = bool(random_start)
        self.set_attack_modes(attack_bn_mode, attack_dropout_mode)
        self.seed = seed
        self._direction: str | None = None
        self._pending: list[Tensor] = []
        self._seen = 0

    # ------------------------------------------------------------------ setup / state
    def setup(self, task: RobustTask) -> None:
        n = int(task.data_info.num_train)
        if n < 1:
            raise ValueError(
                "AMAT needs data_info.num_train >= 1 (the size of the training split) to size "
                f"its per-sample margins, got {n}"
            )
        direction = task.violation_direction
        if direction not in (None, "above", "below"):
            raise ValueError(f"task.violation_direction must be None, 'above' or 'below', got {direction!r}")
        self._direction = direction
        self.register_buffer("margins", torch.full((n,), self.delta, dtype=torch.float32))
        self.register_buffer("threshold_value", torch.tensor(float("nan")))

    def current_threshold(self) -> float | None:
        """The violation threshold in force (``None``: not needed, or not available yet)."""
        if self._direction is None:
            return None
        if self.threshold is not None:
            return self.threshold
        value = float(self.threshold_value)
        if value == value:  # not NaN
            return value
        return self.initial_threshold

    def _warming_up(self, task: RobustTask) -> bool:
        if int(task.current_epoch) < self.warmup_epochs:
            return True
        return self._direction is not None and self.current_threshold() is None

    def signals(self) -> dict[str, float]:
        m = self.margins.float()
        out = {"margin_mean": float(m.mean()), "margin_median": float(m.median()),
               "margin_min": float(m.min()), "margin_max": float(m.max())}
        thr = self.current_threshold()
        if thr is not None:
            out["threshold"] = thr
        return out

    def on_train_epoch_start(self, task: RobustTask) -> None:
        self._pending = []
        self._seen = 0

    def epoch_state(self) -> dict[str, object]:
        # The margin records of this epoch's batches so far, of every rank (a collective: the
        # task calls this on all ranks while saving): a mid-epoch checkpoint without them
        # would resume with those samples' updates lost.
        rows = (torch.cat(self._pending) if self._pending
                else torch.zeros((0, 4), dtype=torch.float64, device=self.margins.device))
        return {"pending_rows": _all_gather_rows(rows).cpu()}

    def load_epoch_state(self, state: dict[str, object]) -> None:
        rows = state.get("pending_rows")
        if not isinstance(rows, Tensor) or not rows.numel():
            self._pending, self._seen = [], 0
            return
        # Keep this rank's rows: a row's key is its global position p·W + rank.
        world = _world_size()
        rank = dist.get_rank() if world > 1 else 0
        mine = rows[rows[:, 0].long() % world == rank].to(self.margins.device)
        self._pending, self._seen = [mine], int(mine.shape[0])

    # ------------------------------------------------------------------ training
    def training_loss(self, task: RobustTask, batch: Batch) -> tuple[Tensor, Logs]:
        x = batch["image"]
        index = batch.get("index")
        if not isinstance(index, Tensor):
            raise ValueError("AMAT needs the batch's 'index' (int64 [B]) to key per-sample margins")
        index = index.long().reshape(-1)
        b = x.shape[0]
        n = self.margins.shape[0]
        if b and (int(index.max()) >= n or int(index.min()) < 0):
            raise ValueError(
                f"AMAT: batch index range [{int(index.min())}, {int(index.max())}] is outside the "
                f"training split of data_info.num_train={n} samples"
            )
        rank, world = int(task.global_rank), _world_size()
        keys = (self._seen + torch.arange(b, device=x.device)) * world + rank
        self._seen += b
        model = task.attack_model()

        if self._warming_up(task):
            out = model(x)
            loss_clean = task.per_sample_loss(out, batch)
            stats = task.violation_statistic(detach_output(out), batch).detach().float()
            self._record(keys, index, torch.full_like(stats, float("nan")), stats)
            return loss_clean.mean(), {"loss_clean": loss_clean.mean().detach(), "warmup": 1.0}

        if (self.attack_bn_mode == "train" and world > 1
                and any(isinstance(m, SyncBatchNorm) for m in model.modules())):
            raise ValueError(
                "AMAT.attack_bn_mode='train' with SyncBatchNorm under DDP: early stopping gives "
                "ranks different numbers of attack forwards and SyncBatchNorm would deadlock; "
                "use attack_bn_mode='eval'"
            )
        thr = self.current_threshold()
        margins = self.margins[index.to(self.margins.device)].to(x.device, torch.float32)
        found = torch.zeros(b, dtype=torch.bool, device=x.device)

        def violated_fn(output: object, target: Batch) -> Tensor:
            hit = task.is_violated(output, target, thr)
            found.logical_or_(hit.to(found.device))
            return hit

        start = torch.maximum(margins - self.delta, torch.full_like(margins, self.delta))
        atk = PGD(eps=margins, norm="l2", steps=self.steps,
                  step_size=self.alpha * margins / self.steps, random_start=self.random_start,
                  init_radius=torch.minimum(start, margins), bounds=tuple(task.data_info.bounds),
                  bn_mode=self.attack_bn_mode, dropout_mode=self.attack_dropout_mode)
        x_adv = atk(model, x, batch, loss_fn=task.per_sample_loss, success_fn=violated_fn,
                    generator=self.generator(task, x.device, self.seed))

        out_clean, out_adv = task.forward_joint([x, x_adv])
        loss_clean = task.per_sample_loss(out_clean, batch).mean()
        loss_adv = task.per_sample_loss(out_adv, batch).mean()
        loss = (1 - self.beta) * loss_clean + self.beta * loss_adv

        with torch.no_grad():
            oc, oa = detach_output(out_clean), detach_output(out_adv)
            clean_ok = ~task.is_violated(oc, batch, thr)
            # A violation found during the attack (eval-mode forwards) or at the final point
            # (this training forward: the last PGD step is not evaluated by the attack).
            violated = found | task.is_violated(oa, batch, thr)
            noise = per_sample_norm((x_adv - x).float(), "l2")
            new = margin_update(margins, violated, clean_ok, noise, self.delta, self.max_margin)
            stats = task.violation_statistic(oc, batch).detach().float()
            self._record(keys, index, new, stats)
        logs: Logs = {
            "loss_clean": loss_clean.detach(),
            "loss_adv": loss_adv.detach(),
            "violated": violated.float().mean(),
            "noise_norm": noise.mean(),
        }
        return loss, logs

    def _record(self, keys: Tensor, index: Tensor, new: Tensor, stats: Tensor) -> None:
        # One float64 row per sample: [global order key, index, new margin (NaN: none), stat].
        # float64 holds the integer keys exactly and lets one collective carry everything.
        rows = torch.stack([keys.double(), index.to(keys.device).double(),
                            new.to(keys.device).double(), stats.to(keys.device).double()], dim=1)
        self._pending.append(rows)

    # ------------------------------------------------------------------ epoch end
    def on_train_epoch_end(self, task: RobustTask) -> Logs:
        device = self.margins.device
        rows = (torch.cat(self._pending).to(device) if self._pending
                else torch.zeros((0, 4), dtype=torch.float64, device=device))
        self._pending = []
        self._seen = 0
        rows = _all_gather_rows(rows)
        logs: Logs = {}
        if rows.shape[0]:
            keys, index = rows[:, 0].long(), rows[:, 1].long()
            first = first_occurrence(index, keys, self.margins.shape[0])
            new, stats = rows[:, 2], rows[:, 3]
            upd = first & ~torch.isnan(new)
            if bool(upd.any()):
                old = self.margins[index[upd]]
                self.margins[index[upd]] = new[upd].to(self.margins.dtype)
                # "grew" = took the +δ branch (the halfway branch never adds δ/2 or more).
                grew = self.margins[index[upd]] > old + self.delta / 2
                logs["margin_grown"] = grew.float().mean()
            if self._direction is not None and self.threshold is None:
                s = stats[first]
                s = s[~torch.isnan(s)]
                if s.numel():
                    self.threshold_value.fill_(robust_threshold(s, self.threshold_z, self._direction))
        logs.update(self.signals())
        return logs


# ---------------------------------------------------------------------- helpers
def robust_threshold(stats: Tensor, z: float, direction: str) -> float:
    """``median ± z·1.4826·MAD`` of ``stats`` (``+`` for ``"above"``, ``−`` for ``"below"``)."""
    s = stats.double()
    med = s.median()
    scale = MAD_TO_SIGMA * (s - med).abs().median()
    sign = 1.0 if direction == "above" else -1.0
    return float(med + sign * z * scale)


def first_occurrence(index: Tensor, keys: Tensor, size: int) -> Tensor:
    """Bool mask: the row holding the smallest ``key`` among the rows of each ``index``."""
    big = torch.iinfo(torch.int64).max
    best = torch.full((size,), big, dtype=torch.int64, device=index.device)
    best.scatter_reduce_(0, index, keys, reduce="amin")
    return keys == best[index]


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_gather_rows(rows: Tensor) -> Tensor:
    """Concatenate the ``[n_r, F]`` tensors of all ranks (any ``n_r``), in rank order."""
    world = _world_size()
    if world == 1:
        return rows
    n = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    padded = rows.new_zeros((max(counts), rows.shape[1]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)])
