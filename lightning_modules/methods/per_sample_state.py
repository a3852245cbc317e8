"""Per-sample records of one training epoch, gathered and de-duplicated across DDP ranks once.

A training method that keeps state per training sample (AMAT's margins, or any rule that
updates a per-sample buffer at the end of an epoch) records a few named values for every sample
of every batch with :meth:`SampleRecords.add`, and at the end of the epoch asks for
:meth:`SampleRecords.gather`: the records of all ranks, each training sample once.

Which record a sample keeps when it was seen twice in one epoch (PyTorch's
``DistributedSampler`` pads the last round with repeats): the one of its first occurrence in
the *global* sample order. Position ``p`` of rank ``r`` among ``W`` ranks is global position
``p·W + r`` (the sampler's interleaving), so the padding is at the end of that order and the
kept record is the one a single process would have made. The resolution is deterministic.

On the wire (one ``all_gather`` of a float64 table, which holds the integer keys exactly) and
in mid-epoch checkpoints (:meth:`SampleRecords.state`), a record is one row
``[global order key, sample index, *fields]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_modules.distributed import all_gather_rows, rank, world_size

__all__ = ["GatheredRecords", "SampleRecords", "first_occurrence"]


def first_occurrence(index: Tensor, keys: Tensor, size: int) -> Tensor:
    """Bool mask ``[N]``: the row holding the smallest ``key`` among the rows of each ``index``.

    Args:
        index: int64 ``[N]`` sample indices in ``[0, size)``.
        keys: int64 ``[N]`` global order keys.
        size: number of distinct samples (the length of the per-sample state).
    """
    big = torch.iinfo(torch.int64).max
    best = torch.full((size,), big, dtype=torch.int64, device=index.device)
    best.scatter_reduce_(0, index, keys, reduce="amin")
    return keys == best[index]


@dataclass(frozen=True)
class GatheredRecords:
    """The records of one epoch of every rank, one per training sample seen.

    Attributes:
        index: int64 ``[M]`` distinct sample indices, in the gathered order (rank-major).
        values: field name -> float64 ``[M]``, aligned with ``index``.
    """

    index: Tensor
    values: dict[str, Tensor]

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"no per-sample field {name!r} (fields: {list(self.values)})") from None

    def __len__(self) -> int:
        return int(self.index.shape[0])


class SampleRecords:
    """This rank's per-sample records of the current epoch, with named float fields.

    Args:
        fields: the names of the values each record carries, in column order (a NaN value is
            allowed and means "none", e.g. no margin update during a warm-up batch).

    Example::

        records = SampleRecords(("margin", "statistic"))
        records.add(batch["index"], margin=new, statistic=stats)   # every batch
        gathered = records.gather(num_train, device)                # end of epoch (collective)
    """

    def __init__(self, fields: Sequence[str]) -> None:
        if not fields or len(set(fields)) != len(fields):
            raise ValueError(f"SampleRecords.fields must be distinct names, got {list(fields)}")
        self.fields = tuple(fields)
        self._rows: list[Tensor] = []
        #: samples recorded by this rank this epoch (its next global position)
        self.seen = 0

    @property
    def width(self) -> int:
        """Columns of a row: key, index, then the fields."""
        return 2 + len(self.fields)

    def reset(self) -> None:
        """Forget this epoch's records (start of an epoch)."""
        self._rows, self.seen = [], 0

    def add(self, index: Tensor, **values: Tensor) -> None:
        """Record one batch: ``index`` int64 ``[B]`` and one ``[B]`` tensor per field."""
        if set(values) != set(self.fields):
            raise ValueError(f"SampleRecords.add: expected the fields {list(self.fields)}, got "
                             f"{sorted(values)}")
        d = index.device
        b = int(index.shape[0])
        keys = (self.seen + torch.arange(b, device=d)) * world_size() + rank()
        self.seen += b
        columns = [keys.double(), index.reshape(-1).double()]
        columns += [values[f].reshape(-1).to(d).double() for f in self.fields]
        self._rows.append(torch.stack(columns, dim=1))

    def rows(self, device: torch.device) -> Tensor:
        """This rank's records as a float64 ``[n, width]`` table on ``device``."""
        if not self._rows:
            return torch.zeros((0, self.width), dtype=torch.float64, device=device)
        return torch.cat(self._rows).to(device)

    def gather(self, size: int, device: torch.device) -> GatheredRecords:
        """All ranks' records, each sample's first occurrence only, and :meth:`reset`. A
        collective under DDP: every rank calls it.

        Args:
            size: number of training samples (indices lie in ``[0, size)``).
            device: where the gather runs and the result lives.
        """
        table = all_gather_rows(self.rows(device))
        self.reset()
        keys, index = table[:, 0].long(), table[:, 1].long()
        keep = first_occurrence(index, keys, size) if table.shape[0] else index.bool()
        return GatheredRecords(index[keep], {f: table[keep, 2 + i] for i, f in enumerate(self.fields)})

    # ------------------------------------------------------------------ mid-epoch checkpoints
    def state(self, device: torch.device) -> Tensor:
        """The records of every rank so far, ``[n, width]`` float64 on the CPU (a collective,
        gathered on ``device``: every rank calls it while a checkpoint is saved)."""
        return all_gather_rows(self.rows(device)).cpu()

    def load_state(self, rows: Tensor | None, device: torch.device) -> None:
        """Take back this rank's records from :meth:`state`'s table (``None`` or empty: none).

        A row's key is its global position ``p·W + rank``, so each rank keeps its own rows.

        Raises:
            ValueError: the table has another number of columns than ``width``.
        """
        if not isinstance(rows, Tensor) or not rows.numel():
            self.reset()
            return
        if rows.dim() != 2 or rows.shape[1] != self.width:
            raise ValueError(f"SampleRecords.load_state: expected rows [n, {self.width}] "
                             f"(key, index, {', '.join(self.fields)}), got {tuple(rows.shape)}")
        mine = rows[rows[:, 0].long() % world_size() == rank()].to(device)
        self._rows, self.seen = [mine], int(mine.shape[0])
