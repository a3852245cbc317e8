"""lightning_modules.distributed: identity on one process, exact over two gloo processes."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules import distributed


def test_identity_without_a_process_group() -> None:
    rows = torch.arange(6.0).reshape(3, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert not distributed.is_distributed()
    assert distributed.all_gather_rows(rows) is rows
    assert distributed.any_rank(True, torch.device("cpu")) is True
    assert distributed.any_rank(False, torch.device("cpu")) is False
    assert distributed.sum_over_ranks({"n": 3, "s": 1.5}) == {"n": 3.0, "s": 1.5}
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rows = torch.full((rank + 1, 2), float(rank))  # rank 0: 1 row, rank 1: 2 rows
        out[rank] = (distributed.rank(), distributed.world_size(),
                     distributed.all_gather_rows(rows).tolist(),
                     distributed.any_rank(rank == 1, torch.device("cpu")),
                     distributed.any_rank(False, torch.device("cpu")),
                     distributed.sum_over_ranks({"n": rank + 1, "big": 2**24 + rank}),
                     distributed.all_gather_objects(("rank", rank, [rank] * rank)))
    finally:
        dist.destroy_process_group()


def test_two_processes_gather_rows_of_different_lengths() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
        results = dict(out)
    gathered = [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    # float64 sums: 2**24 + (2**24 + 1) = 2**25 + 1 is exact (float32 would lose the 1)
    sums = {"n": 3.0, "big": float(2**25 + 1)}
    objects = [("rank", 0, []), ("rank", 1, [1])]
    assert results[0] == (0, 2, gathered, True, False, sums, objects)
    assert results[1] == (1, 2, gathered, True, False, sums, objects)
