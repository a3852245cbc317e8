"""A training DataLoader whose order depends only on (seed, epoch) and that resumes mid-epoch.

Why: PyTorch's ``RandomSampler`` draws each epoch's permutation from the global RNG, so the
order after a resume depends on every random number drawn before it; and Lightning 2.6, when
resumed from a checkpoint taken inside an epoch, continues its batch counter but restarts a
plain DataLoader from its first batch (it warns "your dataloader is not resumable"): the first
batches of the epoch are trained twice and the last ones never.

* :class:`EpochRandomSampler` — a ``RandomSampler`` whose permutation of epoch ``e`` is
  ``torch.randperm(n, generator=seeded(seed, e))``; Lightning calls ``set_epoch`` at every epoch
  start. Under DDP Lightning replaces it with its ``DistributedSampler`` (it recognises a
  ``RandomSampler``), which is already seeded by ``(seed, epoch)``.
* :class:`ResumableDataLoader` — a ``DataLoader`` with ``state_dict`` / ``load_state_dict``
  (Lightning saves them in the checkpoint's loop state): the epoch and the number of batches
  the training loop has taken from it. Restored, its next iteration *of the same epoch* skips
  those batches at the index level (no sample is loaded for nothing). Its worker seeds are
  drawn from a generator seeded by ``(seed, epoch)`` too, not from the global RNG.

Limit (documented in the README): with ``num_workers > 0`` and ``persistent_workers`` the workers'
own random streams (random augmentations) continue from epoch to epoch and are not in any
checkpoint, so the augmentations after a resume differ from the uninterrupted run's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from attacks.seeding import seeded_generator


class EpochRandomSampler(RandomSampler):
    """Random permutation of ``range(len(data_source))`` fixed by ``(seed, epoch)``.

    Args:
        data_source: the dataset (only its length is used).
        seed: base seed; ``None`` takes ``torch.initial_seed()`` (the seed ``seed_everything``
            set), so a seeded run is reproducible and an unseeded one still random.
    """

    def __init__(self, data_source: Sized, seed: int | None = None) -> None:
        super().__init__(data_source=data_source)
        self.seed = int(torch.initial_seed() if seed is None else seed) & ((1 << 63) - 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = seeded_generator(self.seed, self.epoch, "order")
        yield from torch.randperm(len(self.data_source), generator=gen).tolist()


class _SkippingBatchSampler:
    """Wraps the loader's batch sampler: its next iteration starts ``loader._skip_now``
    batches in (then the skip is spent). Its length stays the full epoch's, which is what
    Lightning counts batches against."""

    def __init__(self, loader: ResumableDataLoader, inner: Any) -> None:
        self.loader, self.inner = loader, inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        # A generator, so the skip is read when the first index is drawn: PyTorch's worker
        # iterator calls iter() twice on construction and uses only the second one.
        skip, self.loader._skip_now = self.loader._skip_now, 0
        yield from itertools.islice(iter(self.inner), skip, None)


class ResumableDataLoader(DataLoader):
    """``DataLoader`` that Lightning can checkpoint and resume inside an epoch (module doc).

    Takes the arguments of ``DataLoader``; ``seed`` (keyword) seeds the worker-seed generator
    of each epoch (``None``: ``torch.initial_seed()``).
    """

    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seed = int(torch.initial_seed() if seed is None else seed) & ((1 << 63) - 1)
        self._epoch_taken = 0  # batches handed out in the current iteration
        self._iter_epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches) from load_state_dict
        self._skip_now = 0
        self._wrapped_index_sampler: _SkippingBatchSampler | None = None

    @property
    def _index_sampler(self) -> Any:  # type: ignore[override]
        inner = super()._index_sampler
        if self._wrapped_index_sampler is None or self._wrapped_index_sampler.inner is not inner:
            self._wrapped_index_sampler = _SkippingBatchSampler(self, inner)
        return self._wrapped_index_sampler

    def _sampler_epoch(self) -> int:
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            epoch = getattr(sampler, "epoch", None)
            if isinstance(epoch, int):
                return epoch
        return self._iter_epoch

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: nothing runs until the first batch is requested, i.e. after Lightning
        # called set_epoch and load_state_dict for this epoch.
        epoch = self._sampler_epoch()
        skip = 0
        if self._resume is not None:
            resume_epoch, batches = self._resume
            self._resume = None
            if resume_epoch == epoch:
                skip = batches
        self._iter_epoch, self._epoch_taken, self._skip_now = epoch, skip, skip
        gen = seeded_generator(self._seed, epoch, "workers")
        self.generator = gen  # worker base seeds of this epoch
        for batch in super().__iter__():
            self._epoch_taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the epoch being iterated and batches taken from it."""
        return {"epoch": int(self._iter_epoch), "batches": int(self._epoch_taken)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))
