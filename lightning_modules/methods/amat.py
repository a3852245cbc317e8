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
(:mod:`lightning_modules.methods.per_sample_state`, which keeps these per-sample records). The
margin rule and its end-of-epoch application live in :mod:`lightning_modules.methods.amat_margins`,
the threshold strategies (fixed, running, from a clean checkpoint) in
:mod:`lightning_modules.methods.amat_thresholds`.

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
  fixed before AMAT starts. ``threshold_from="clean_checkpoint"`` (default) does that once at
  the start of the fit from ``clean_checkpoint``'s net on the training loader and keeps the
  value in the checkpointed ``threshold_value`` buffer; ``"running"`` recomputes it from every
  epoch's clean statistics; ``threshold`` fixes it by hand; a missing clean checkpoint warns
  and runs ``"running"``, so every experiment config still runs on its own. The strategies and
  ``threshold_centre`` (``"mean"``: mean ± z·std, the authors'; ``"median"``: median ±
  z·1.4826·MAD) are documented in :mod:`lightning_modules.methods.amat_thresholds`.
* δ (``delta``) and ``max_margin`` are in L2 units of ``data_info.bounds`` (pixels in [0, 1]).
  The authors sweep δ per dataset (``run_AMAT_training.py``: 1–9 on D2, 0.1–1.9 on D4,
  17–21 on D5, on nnU-Net's normalised 3D patches); the configs choose δ from the margin
  diagnostics and write the reasoning in their headers.
* β = 0.5 and α = 4 (step ``α·E/steps``) as in ``run_AMAT_training.py``; 20 steps there.

Diagnostics (per epoch, in :meth:`on_train_epoch_end`'s logs and :attr:`last_diagnostics`): see
:func:`lightning_modules.methods.amat_margins.apply_margins`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import SyncBatchNorm

from attacks import AttackSpec, per_sample_norm
from attacks.mode import Mode
from lightning_modules.distributed import world_size
from lightning_modules.methods.amat_margins import (
    RECORD_FIELDS,
    adversarial_term,
    apply_margins,
    margin_update,
)
from lightning_modules.methods.amat_thresholds import (
    Centre,
    ThresholdFrom,
    ThresholdStrategy,
    make_threshold,
)
from lightning_modules.methods.base import (
    Logs,
    TrainingMethod,
    check_choice,
    check_range,
    detach_output,
)
from lightning_modules.methods.per_sample_state import SampleRecords
from lightning_modules.protocol import Batch, TrainableTask

#: which samples' adversarial losses form the adversarial term
AdvLossOn = Literal["clean_correct", "all"]


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
        adv_loss_on: AdvLossOn = "clean_correct",
        early_stop: bool = False,
        threshold_from: ThresholdFrom = "clean_checkpoint",
        clean_checkpoint: str | None = None,
        threshold: float | None = None,
        initial_threshold: float | None = None,
        threshold_z: float = 0.0,
        threshold_centre: Centre = "mean",
        warmup_epochs: int = 0,
        attack_bn_mode: Mode = "eval",
        attack_dropout_mode: Mode = "eval",
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_range(owner, "delta", delta, 0.0, lo_open=True)
        check_range(owner, "max_margin", max_margin, float(delta))
        check_range(owner, "alpha", alpha, 0.0, lo_open=True)
        check_range(owner, "beta", beta, 0.0, 1.0, lo_open=True)
        check_range(owner, "warmup_epochs", warmup_epochs, 0)
        check_choice(owner, "adv_loss_on", adv_loss_on, get_args(AdvLossOn))
        check_choice(owner, "threshold_from", threshold_from, get_args(ThresholdFrom))
        check_choice(owner, "threshold_centre", threshold_centre, get_args(Centre))
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
        self.threshold_z, self.threshold_centre = float(threshold_z), threshold_centre
        self.warmup_epochs, self.seed = int(warmup_epochs), seed
        self.set_attack_modes(attack_bn_mode, attack_dropout_mode)
        self._direction: str | None = None
        #: where the violation threshold comes from (set in :meth:`setup`, knowing the task)
        self.thresholds: ThresholdStrategy = make_threshold(
            None, threshold=None, threshold_from=threshold_from, clean_checkpoint=None,
            initial=None, z=0.0, centre=threshold_centre)
        #: this epoch's per-sample records (fields :data:`RECORD_FIELDS`)
        self.records = SampleRecords(RECORD_FIELDS)
        #: the last epoch's margin diagnostics (fractions), read by ``MarginMonitor``
        self.last_diagnostics: dict[str, float] = {}

    # ------------------------------------------------------------------ setup / state
    def setup(self, task: TrainableTask) -> None:
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
        self.thresholds = make_threshold(
            direction, threshold=self.threshold, threshold_from=self.threshold_from,
            clean_checkpoint=self.clean_checkpoint, initial=self.initial_threshold,
            z=self.threshold_z, centre=self.threshold_centre)

    def current_threshold(self) -> float | None:
        """The violation threshold in force (``None``: not needed, or not available yet)."""
        return self.thresholds.current(float(self.threshold_value))

    def _warming_up(self, task: TrainableTask) -> bool:
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

    def on_train_epoch_start(self, task: TrainableTask) -> None:
        self.records.reset()
        value = self.thresholds.at_epoch_start(task, float(self.threshold_value),
                                               self.margins.shape[0], self.margins.device)
        if value is not None:
            self.threshold_value.fill_(value)

    def epoch_state(self) -> dict[str, object]:
        # The margin records of this epoch's batches so far, of every rank (a collective: the
        # task calls this on all ranks while saving): a mid-epoch checkpoint without them
        # would resume with those samples' updates lost. Rows [key, index, *RECORD_FIELDS].
        return {"pending_rows": self.records.state(self.margins.device)}

    def load_epoch_state(self, state: dict[str, object]) -> None:
        rows = state.get("pending_rows")
        self.records.load_state(rows if isinstance(rows, Tensor) else None, self.margins.device)

    # ------------------------------------------------------------------ training
    def training_loss(self, task: TrainableTask, batch: Batch) -> tuple[Tensor, Logs]:
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
        world = world_size()
        model = task.attack_model()

        if self._warming_up(task):
            out = model(x)
            loss_clean = task.per_sample_loss(out, batch)
            stats = task.violation_statistic(detach_output(out), batch).detach().float()
            nan = torch.full_like(stats, float("nan"))
            self.records.add(index, margin=nan, statistic=stats, grew=nan, clean_violated=nan)
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
        x_adv = atk(model, x, batch, loss_fn=task.per_sample_loss, is_violated=violated_fn,
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
            self.records.add(index, margin=new, statistic=stats, grew=grew,
                             clean_violated=clean_violated.float())
        logs: Logs = {
            "loss_clean": loss_clean.detach(),
            "loss_adv": loss_adv.detach(),
            "violated": violated.float().mean(),
            "noise_norm": noise.mean(),
            "clean_correct": clean_ok.float().mean(),
        }
        return loss, logs

    # ------------------------------------------------------------------ epoch end
    def on_train_epoch_end(self, task: TrainableTask) -> Logs:
        # every rank's records, each sample's first occurrence (a collective)
        rec = self.records.gather(self.margins.shape[0], self.margins.device)
        logs: Logs = {}
        self.last_diagnostics = {}
        if len(rec):
            diag = apply_margins(self.margins, rec)
            self.last_diagnostics = {k: float(v) for k, v in diag.items()}
            logs.update(diag)
            value = self.thresholds.at_epoch_end(rec["statistic"])
            if value is not None:
                self.threshold_value.fill_(value)
        thr = self.current_threshold()
        if self.last_diagnostics and thr is not None:
            self.last_diagnostics["threshold"] = thr
        logs.update(self.signals())
        return logs
