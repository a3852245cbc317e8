"""Adaptive-margin adversarial training (AMAT, Ma & Liang 2022): one L2 margin per training sample.

Each training sample ``i`` has a margin ``E[i]`` (its own adversarial budget), a buffer of this
module — so it is saved in checkpoints, restored on resume and moved with the model — and is
identical on every DDP rank.

Per batch (all samples in parallel, each inside its own ball):

1. L2 PGD with ``steps`` steps of size ``alpha·E[i]/steps`` (normalised gradient, projection
   onto the ``E[i]`` ball) from a random start of norm ``max(E[i] − δ, δ)`` (capped at
   ``E[i]``), ascending the task's per-sample loss. Every iterate's forward also runs the
   task's *violation* test (classification: misclassified; segmentation: Dice below the
   threshold; landmarks / detection: loss above it). ``early_stop=False`` (reference): all
   steps run and the test only records whether some iterate violated; ``early_stop=True``: a
   sample stops moving at its first violating iterate, whose noise norm is then recorded.
2. Loss ``(1 − β)·mean_B L(x) + β·L_adv`` from one joint forward of clean and adversarial
   images, where ``L_adv`` is the mean adversarial loss over the samples that are correct on
   their clean input (``adv_loss_on="clean_correct"``, 0 when there are none) or over the whole
   batch (``"all"``).
3. The new margin is recorded: ``E[i] + δ`` if no violation was found and the clean prediction
   is correct, else ``(E[i] + ‖x_adv − x‖₂) / 2``; clamped to ``[0, max_margin]``.

At the end of the epoch the recorded margins are gathered from all ranks and applied, so every
rank holds the same margins. A sample seen twice in an epoch (the distributed sampler pads the
last round with repeats) keeps the record of its first occurrence in the global sample order
(position ``p`` on rank ``r`` of ``W`` is global position ``p·W + r``, the interleaving of
PyTorch's ``DistributedSampler``): the padding is at the end of that order, so the kept record
is the one 1 process would have made. The resolution is deterministic either way.

Choices, against the paper and the authors' code (SarielMa/amat_conf: ``nnUNet/nnunet/AMAT``,
``nnUNet/.../nnUNetTrainerV2.py``, ``landmark_detection/train_AMAT_*``, ``yolov5/train_AMAT.py``):

* ``clean_counts_as_correct=True`` (default). In the authors' code the *clean* correctness test
  of segmentation is ``Dice >= 0`` and those of landmarks / detection use thresholds that no
  sample reaches (1.0 on a heatmap L1, 1e10 on the YOLO losses): every clean input counts as
  correct, only the adversarial test uses the threshold. Applies to the thresholded tasks
  (segmentation, landmarks, detection); classification keeps "argmax is the label", which is
  what correctness means there and what the classification code does. ``False``: the clean
  input must pass the same threshold test (the variant this module had before).
* ``adv_loss_on="clean_correct"`` (default): ``AMAT_loss`` adds the adversarial term only for
  ``idx_n`` = the clean-correct samples, divided by their number, with ``beta_position=1``:
  ``(1 − β)·(loss1 + loss2) + β·loss3`` = ``(1 − β)·mean clean + β·mean adv over clean-correct``.
  ``"all"``: every sample's adversarial loss (SAT's form).
* ``early_stop=False`` (default): ``pgd_attack`` in ``RobustDNN_AMAT_claregseg.py`` runs all
  ``max_iter`` (20) steps with ``normalize_grad_`` and ``clip_norm_``, counting violations
  (``advc``) at every iterate; a sample grows when ``advc == 0``, else its margin moves halfway
  to the norm of the *final* iterate — which the projection keeps at (or near) ``E[i]``, so a
  violated margin stays put rather than halving. ``True``: stop at the first violation (the
  earlier variant; then the halfway step uses the norm where the violation was found).
  The authors' attack does not clip to the image range (commented out); ours keeps the
  ``data_info.bounds`` clamp of every medrobust attack.
* Threshold (thresholded tasks). The authors hard-code the clean model's *training* statistics
  per dataset ("avg mean" Dice of D2 / D4 / D5 in ``nnUNetTrainerV2.py``; "train 1z" (active)
  and "2z" loss levels in ``train_AMAT_2zscore.py``; fixed loss levels in ``train_AMAT.py``),
  fixed before AMAT starts. ``threshold_from="clean_checkpoint"`` (default) does that: at the
  start of the
  fit (first training epoch) the net weights of ``clean_checkpoint`` are run in eval mode over
  the training loader, the per-sample violation statistics are gathered (all ranks,
  de-duplicated) and ``threshold_value = centre ± z·scale`` is stored in a buffer — saved in
  every checkpoint and, once set, never recomputed (a resumed run keeps it). The pass restores
  the RNG state, so it does not change the training run's randomness. ``clean_checkpoint`` may
  be a glob (newest match) and may start with ``{default_root_dir}`` (the trainer's), so a
  suite can point at the clean run of the same suite. Without ``clean_checkpoint`` (and without
  ``threshold``), or when it names no existing file, the module warns and falls back to
  ``"running"``, so every experiment config still runs on its own.
  ``threshold_from="running"``: recomputed at the end of every epoch from that epoch's clean
  statistics (the earlier variant; no value in the first epoch → a clean warm-up epoch unless
  ``initial_threshold`` is given). ``threshold`` fixes the value by hand.
  ``threshold_centre="mean"`` (default, the authors' "avg mean" / z-scores: mean ± z·std) or
  ``"median"`` (median ± z·1.4826·MAD, robust to a few failed samples).
* δ (``delta``) and ``max_margin`` are in L2 units of ``data_info.bounds`` (pixels in [0, 1]).
  The authors sweep δ per dataset (``run_AMAT_training.py``: 1–9 on D2, 0.1–1.9 on D4,
  17–21 on D5, on nnU-Net's normalised 3D patches); the configs choose δ from the margin
  diagnostics and write the reasoning in their headers.
* β = 0.5 and α = 4 (step ``α·E/steps``) as in ``run_AMAT_training.py``; 20 steps there.

Diagnostics (per epoch, in :meth:`on_train_epoch_end`'s logs and :attr:`last_diagnostics`):
``margin_grown`` / ``margin_shrunk`` / ``margin_held`` (fractions of the updated samples that
took the +δ branch / ended more than 1 % below their old margin / neither) and
``clean_violated`` (fraction whose clean input fails the threshold test, whether or not it
counts as correct).
"""

from __future__ import annotations

import glob
import os
import random
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.modules.batchnorm import SyncBatchNorm

from attacks import AttackSpec, per_sample_norm
from attacks.tree import tree_map
from lightning_modules import distributed
from lightning_modules.distributed import all_gather_rows, world_size
from lightning_modules.methods.base import (
    Logs,
    TrainingMethod,
    check_choice,
    check_range,
    detach_output,
)
from lightning_modules.protocol import Batch, RobustTask

MAD_TO_SIGMA = 1.4826
#: columns of a per-sample record row (float64): global order key, sample index, new margin
#: (NaN: no update), clean violation statistic, took the +δ branch, clean input violated
_COLS = 6


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


def adversarial_term(loss_adv: Tensor, clean_correct: Tensor, on: str) -> Tensor:
    """``L_adv`` of a batch from per-sample adversarial losses ``[B]``.

    ``on="all"``: their mean. ``on="clean_correct"``: the mean over the samples with
    ``clean_correct`` (Bool ``[B]``), 0 (still differentiable) when there are none — Ma &
    Liang's ``loss3``.
    """
    if on == "all":
        return loss_adv.mean()
    mask = clean_correct.to(loss_adv.dtype)
    return (loss_adv * mask).sum() / mask.sum().clamp(min=1.0)


class AMAT(TrainingMethod):
    """Adaptive-margin adversarial training (Ma & Liang), task-agnostic.

    Args:
        delta: margin step δ (L2, pixel units of ``data_info.bounds``); margins start at δ.
        max_margin: upper bound of every margin.
        attack: the attack, an :class:`attacks.AttackSpec` or its mapping (``None``:
            :attr:`default_attack`, L2 PGD-20 with random start, as the paper). A mapping
            without ``name`` or naming ``pgd`` changes the default (``{steps: 3}``,
            ``{random_start: false}`` — start at ``x``; makes the attack independent of the
            RNG, used by the DDP equivalence test). AMAT sets the budget (``E[i]``), the step
            (``alpha·E[i]/steps``) and the start radius (``max(E[i] − δ, δ)``, capped at
            ``E[i]``) per sample, so the spec gives none of them (an attack without a step
            size or start radius, e.g. APGD, keeps its own rule); its norm must be L2 (the
            margins are L2).
        alpha: step size factor: step ``alpha·E[i]/steps`` (paper: 4–5).
        beta: weight of the adversarial loss (paper: 0.5).
        clean_counts_as_correct: thresholded tasks: every clean input counts as correct
            (authors' code); ``False``: it must pass the threshold test too.
        adv_loss_on: ``"clean_correct"`` (authors) or ``"all"`` samples in the adversarial term.
        early_stop: stop a sample's attack at its first violation (``False``: all steps run,
            as the authors' code).
        threshold_from: ``"clean_checkpoint"`` (statistics of ``clean_checkpoint``'s net on the
            training set, once at fit start) or ``"running"`` (every epoch's clean statistics).
        clean_checkpoint: Lightning checkpoint of a clean model of the same net (path or glob,
            may start with ``{default_root_dir}``).
        threshold: fixed violation threshold (task units: Dice, loss…); ``None`` → computed.
        initial_threshold: ``"running"``: used until the first computed value exists (skips
            the warm-up); ``"clean_checkpoint"`` without a checkpoint: the threshold.
        threshold_z: ``z`` of the computed threshold ``centre ± z·scale``.
        threshold_centre: ``"mean"`` (± z·std, authors) or ``"median"`` (± z·1.4826·MAD).
        warmup_epochs: clean epochs at the start (statistics are still collected). A task that
            needs a threshold trains clean until one exists anyway.
        attack_bn_mode, attack_dropout_mode: module modes during the attack (see SAT).
        seed: seed of the random start (with step and rank); ``None`` = global RNG.

    Buffers: ``margins`` ``[data_info.num_train]``, ``threshold_value`` (scalar, NaN until
    computed). Logged per step: ``violated``, ``noise_norm``, ``loss_clean``, ``loss_adv``;
    per epoch: ``margin_mean`` / ``margin_median`` / ``margin_min`` / ``margin_max``,
    ``margin_grown`` / ``margin_shrunk`` / ``margin_held`` / ``clean_violated`` and
    ``threshold``.
    """

    name = "amat"
    #: L2 PGD-20 from a random start (Ma & Liang); budget, step and start radius per sample
    default_attack = {"name": "pgd", "norm": "l2", "steps": 20, "random_start": True}
    legacy_attack_fields = {"steps": "steps", "random_start": "random_start"}

    def __init__(
        self,
        delta: float = 0.1,
        max_margin: float = 2.0,
        attack: dict[str, Any] | AttackSpec | None = None,
        alpha: float = 4.0,
        beta: float = 0.5,
        clean_counts_as_correct: bool = True,
        adv_loss_on: str = "clean_correct",
        early_stop: bool = False,
        threshold_from: str = "clean_checkpoint",
        clean_checkpoint: str | None = None,
        threshold: float | None = None,
        initial_threshold: float | None = None,
        threshold_z: float = 0.0,
        threshold_centre: str = "mean",
        warmup_epochs: int = 0,
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
        check_choice(owner, "adv_loss_on", adv_loss_on, ("clean_correct", "all"))
        check_choice(owner, "threshold_from", threshold_from, ("clean_checkpoint", "running"))
        check_choice(owner, "threshold_centre", threshold_centre, ("mean", "median"))
        spec = self.set_attack(attack, self.default_attack)
        for key in ("step_size", "rel_step_size", "init_radius", "rel_init_radius"):
            if getattr(spec, key) is not None:
                raise ValueError(
                    f"{owner}.attack.{key}: AMAT sets the step (alpha·E[i]/steps) and the start "
                    "radius (max(E[i] − delta, delta)) per sample; remove it (tune alpha)")
        if spec.setting("norm") != "l2":
            raise ValueError(f"{owner}.attack.norm must be 'l2' (AMAT's margins are L2 radii), got "
                             f"{spec.setting('norm')!r}")
        if clean_checkpoint is not None and threshold_from != "clean_checkpoint":
            raise ValueError(f"{owner}.clean_checkpoint is only used with "
                             f"threshold_from='clean_checkpoint', got threshold_from={threshold_from!r}")
        self.delta, self.max_margin = float(delta), float(max_margin)
        self.alpha, self.beta = float(alpha), float(beta)
        self.clean_counts_as_correct = bool(clean_counts_as_correct)
        self.adv_loss_on = adv_loss_on
        self.early_stop = bool(early_stop)
        self.threshold_from = threshold_from
        self.clean_checkpoint = None if clean_checkpoint is None else str(clean_checkpoint)
        self.threshold = None if threshold is None else float(threshold)
        self.initial_threshold = None if initial_threshold is None else float(initial_threshold)
        self.threshold_z = float(threshold_z)
        self.threshold_centre = threshold_centre
        self.warmup_epochs = int(warmup_epochs)
        self.set_attack_modes(attack_bn_mode, attack_dropout_mode)
        self.seed = seed
        self._direction: str | None = None
        self._pending: list[Tensor] = []
        self._seen = 0
        #: the last epoch's margin diagnostics (fractions), read by ``MarginMonitor``
        self.last_diagnostics: dict[str, float] = {}

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
        if (direction is not None and self.threshold is None and self.initial_threshold is None
                and self.threshold_from == "clean_checkpoint" and self.clean_checkpoint is None):
            warnings.warn(
                "AMAT(threshold_from='clean_checkpoint') without clean_checkpoint: falling back "
                "to running statistics of the model being trained (give clean_checkpoint, or "
                "threshold_from='running' to silence this)", stacklevel=2)

    @property
    def _running(self) -> bool:
        return (self.threshold_from == "running" or self.clean_checkpoint is None
                or getattr(self, "_clean_checkpoint_missing", False))

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
        if (self._direction is not None and self.threshold is None and not self._running
                and float(self.threshold_value) != float(self.threshold_value)):
            try:
                self.resolve_checkpoint(task)
            except FileNotFoundError as err:
                # Every experiment config must run on its own (DESIGN): without the clean run
                # the reference threshold cannot exist, so say so loudly and train with the
                # running statistics (the earlier variant) instead of failing.
                warnings.warn(f"{err}; AMAT falls back to threshold_from='running' for this run "
                              "(train the clean experiment first for the reference threshold)",
                              stacklevel=2)
                self._clean_checkpoint_missing = True
                return
            self.threshold_value.fill_(self.threshold_from_clean_model(task))

    # ------------------------------------------------------------------ clean-model threshold
    def resolve_checkpoint(self, task: RobustTask) -> str:
        """The file ``clean_checkpoint`` names (``{default_root_dir}`` filled in; a glob picks
        its newest match)."""
        pattern = str(self.clean_checkpoint)
        trainer = getattr(task, "_trainer", None)
        root = str(getattr(trainer, "default_root_dir", None) or os.getcwd())
        pattern = pattern.replace("{default_root_dir}", root)
        matches = sorted(glob.glob(pattern), key=os.path.getmtime) if glob.has_magic(pattern) else (
            [pattern] if os.path.isfile(pattern) else [])
        if not matches:
            raise FileNotFoundError(f"AMAT.clean_checkpoint={self.clean_checkpoint!r}: no file at "
                                    f"{pattern!r} (a clean run's Lightning checkpoint is expected)")
        return matches[-1]

    def threshold_from_clean_model(self, task: RobustTask) -> float:
        """``centre ± z·scale`` of the clean checkpoint's per-sample violation statistics on the
        training loader (eval mode, no gradients; all ranks, de-duplicated). The task's net
        weights and every RNG are restored afterwards."""
        path = self.resolve_checkpoint(task)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        net_state = {k[4:]: v for k, v in (state or {}).items() if k.startswith("net.")}
        if not net_state:
            raise ValueError(f"AMAT.clean_checkpoint {path}: no 'net.*' weights in its state_dict")
        trainer = getattr(task, "_trainer", None)
        loader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
        if loader is None:
            raise ValueError("AMAT.threshold_from='clean_checkpoint' needs a trainer with a "
                             "training dataloader (it runs at the start of fit)")
        own = {k: v.detach().clone() for k, v in task.net.state_dict().items()}
        rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
        model = task.attack_model()
        modes = [m.training for m in model.modules()]
        device = self.margins.device
        rows, seen, rank, world = [], 0, int(task.global_rank), world_size()
        try:
            task.net.load_state_dict(net_state)
            model.eval()
            with torch.no_grad():
                for batch in loader:
                    batch = tree_map(lambda t: t.to(device), batch)
                    b = int(batch["image"].shape[0])
                    keys = (seen + torch.arange(b, device=device)) * world + rank
                    seen += b
                    stats = task.violation_statistic(model(batch["image"]), batch).float().reshape(-1)
                    rows.append(torch.stack([keys.double(), batch["index"].to(device).double(),
                                             stats.to(device).double()], dim=1))
        finally:
            task.net.load_state_dict(own)
            for m, mode in zip(model.modules(), modes):
                m.training = mode
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])  # noqa: NPY002
            random.setstate(rng[2])
        table = torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.float64, device=device)
        table = all_gather_rows(table)
        first = first_occurrence(table[:, 1].long(), table[:, 0].long(), self.margins.shape[0])
        s = table[first, 2]
        s = s[~torch.isnan(s)]
        if not s.numel():
            raise ValueError(f"AMAT.clean_checkpoint {path}: no finite violation statistic on "
                             "the training set")
        return threshold_of(s, self.threshold_z, str(self._direction), self.threshold_centre)

    def epoch_state(self) -> dict[str, object]:
        # The margin records of this epoch's batches so far, of every rank (a collective: the
        # task calls this on all ranks while saving): a mid-epoch checkpoint without them
        # would resume with those samples' updates lost.
        rows = (torch.cat(self._pending) if self._pending
                else torch.zeros((0, 4), dtype=torch.float64, device=self.margins.device))
        return {"pending_rows": all_gather_rows(rows).cpu()}

    def load_epoch_state(self, state: dict[str, object]) -> None:
        rows = state.get("pending_rows")
        if not isinstance(rows, Tensor) or not rows.numel():
            self._pending, self._seen = [], 0
            return
        # Keep this rank's rows: a row's key is its global position p·W + rank.
        world = world_size()
        rank = distributed.rank()
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
        rank, world = int(task.global_rank), world_size()
        keys = (self._seen + torch.arange(b, device=x.device)) * world + rank
        self._seen += b
        model = task.attack_model()

        if self._warming_up(task):
            out = model(x)
            loss_clean = task.per_sample_loss(out, batch)
            stats = task.violation_statistic(detach_output(out), batch).detach().float()
            nan = torch.full_like(stats, float("nan"))
            self._record(keys, index, nan, stats, nan, nan)
            return loss_clean.mean(), {"loss_clean": loss_clean.mean().detach(), "warmup": 1.0}

        if (self.early_stop and self.attack_bn_mode == "train" and world > 1
                and any(isinstance(m, SyncBatchNorm) for m in model.modules())):
            raise ValueError(
                "AMAT.attack_bn_mode='train' with SyncBatchNorm under DDP and early_stop=True: "
                "early stopping gives ranks different numbers of attack forwards and "
                "SyncBatchNorm would deadlock; use attack_bn_mode='eval' or early_stop=False"
            )
        thr = self.current_threshold()
        margins = self.margins[index.to(self.margins.device)].to(x.device, torch.float32)
        found = torch.zeros(b, dtype=torch.bool, device=x.device)
        early_stop = self.early_stop

        def violated_fn(output: object, target: Batch) -> Tensor:
            hit = task.is_violated(output, target, thr)
            found.logical_or_(hit.to(found.device))
            # Without early stopping the attack is told "not yet" and runs every step; the
            # violation is only recorded (the authors' advc counter).
            return hit if early_stop else torch.zeros_like(hit)

        start = torch.maximum(margins - self.delta, torch.full_like(margins, self.delta))
        steps = int(self.attack.setting("steps") or 1)
        atk = self.attack.build(
            margins, tuple(task.data_info.bounds), (self.attack_bn_mode, self.attack_dropout_mode),
            overrides={"step_size": self.alpha * margins / steps,
                       "init_radius": torch.minimum(start, margins)})
        x_adv = atk(model, x, batch, loss_fn=task.per_sample_loss, success_fn=violated_fn,
                    generator=self.generator(task, x.device, self.seed))

        out_clean, out_adv = task.forward_joint([x, x_adv])
        per_clean = task.per_sample_loss(out_clean, batch)
        per_adv = task.per_sample_loss(out_adv, batch)
        with torch.no_grad():
            oc, oa = detach_output(out_clean), detach_output(out_adv)
            clean_violated = task.is_violated(oc, batch, thr).reshape(-1)
            if self._direction is not None and self.clean_counts_as_correct:
                clean_ok = torch.ones_like(clean_violated)
            else:
                clean_ok = ~clean_violated
        loss_clean = per_clean.mean()
        loss_adv = adversarial_term(per_adv, clean_ok, self.adv_loss_on)
        loss = (1 - self.beta) * loss_clean + self.beta * loss_adv

        with torch.no_grad():
            # A violation found during the attack (eval-mode forwards) or at the final point
            # (this training forward: the last PGD step is not evaluated by the attack).
            violated = found | task.is_violated(oa, batch, thr)
            noise = per_sample_norm((x_adv - x).float(), "l2")
            new = margin_update(margins, violated, clean_ok, noise, self.delta, self.max_margin)
            stats = task.violation_statistic(oc, batch).detach().float()
            grew = ((~violated) & clean_ok).float()
            self._record(keys, index, new, stats, grew, clean_violated.float())
        logs: Logs = {
            "loss_clean": loss_clean.detach(),
            "loss_adv": loss_adv.detach(),
            "violated": violated.float().mean(),
            "noise_norm": noise.mean(),
            "clean_correct": clean_ok.float().mean(),
        }
        return loss, logs

    def _record(self, keys: Tensor, index: Tensor, new: Tensor, stats: Tensor, grew: Tensor,
                clean_violated: Tensor) -> None:
        # One float64 row per sample (see _COLS); float64 holds the integer keys exactly and
        # lets one collective carry everything.
        d = keys.device
        rows = torch.stack([keys.double(), index.to(d).double(), new.to(d).double(),
                            stats.to(d).double(), grew.to(d).double(),
                            clean_violated.to(d).double()], dim=1)
        self._pending.append(rows)

    # ------------------------------------------------------------------ epoch end
    def on_train_epoch_end(self, task: RobustTask) -> Logs:
        device = self.margins.device
        rows = (torch.cat(self._pending).to(device) if self._pending
                else torch.zeros((0, _COLS), dtype=torch.float64, device=device))
        self._pending = []
        self._seen = 0
        rows = all_gather_rows(rows)
        logs: Logs = {}
        self.last_diagnostics = {}
        if rows.shape[0]:
            keys, index = rows[:, 0].long(), rows[:, 1].long()
            first = first_occurrence(index, keys, self.margins.shape[0])
            new, stats = rows[:, 2], rows[:, 3]
            upd = first & ~torch.isnan(new)
            if bool(upd.any()):
                old = self.margins[index[upd]].clone()
                self.margins[index[upd]] = new[upd].to(self.margins.dtype)
                now = self.margins[index[upd]]
                grew = rows[upd, 4] > 0.5
                # "shrunk": ended more than 1 % below the old margin (without early stopping a
                # violated margin moves halfway to a final noise norm just under E: "held").
                shrunk = (~grew) & (now < 0.99 * old)
                diag = {"margin_grown": grew.float().mean(), "margin_shrunk": shrunk.float().mean(),
                        "margin_held": ((~grew) & ~shrunk).float().mean(),
                        "clean_violated": (rows[upd, 5] > 0.5).float().mean()}
                self.last_diagnostics = {k: float(v) for k, v in diag.items()}
                logs.update(diag)
            if self._direction is not None and self.threshold is None and self._running:
                s = stats[first]
                s = s[~torch.isnan(s)]
                if s.numel():
                    self.threshold_value.fill_(threshold_of(s, self.threshold_z, self._direction,
                                                            self.threshold_centre))
        thr = self.current_threshold()
        if self.last_diagnostics and thr is not None:
            self.last_diagnostics["threshold"] = thr
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


def threshold_of(stats: Tensor, z: float, direction: str, centre: str = "mean") -> float:
    """``mean ± z·std`` (``centre="mean"``, population std) or :func:`robust_threshold`."""
    if centre == "median":
        return robust_threshold(stats, z, direction)
    s = stats.double()
    sign = 1.0 if direction == "above" else -1.0
    std = s.std(unbiased=False) if s.numel() > 1 else s.new_zeros(())
    return float(s.mean() + sign * z * std)


def first_occurrence(index: Tensor, keys: Tensor, size: int) -> Tensor:
    """Bool mask: the row holding the smallest ``key`` among the rows of each ``index``."""
    big = torch.iinfo(torch.int64).max
    best = torch.full((size,), big, dtype=torch.int64, device=index.device)
    best.scatter_reduce_(0, index, keys, reduce="amin")
    return keys == best[index]

