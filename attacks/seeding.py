"""Seeded randomness for the whole tree, in one place.

* :func:`mix_seed` turns keys (ints and short strings: a base seed, a step, a rank, a sample id,
  a salt) into one seed in ``[0, 2⁶³)``: blake2b of the keys joined by ``-``, so it is the same in
  every process, machine and Python version (``hash`` of a tuple is salted per process as soon as
  it holds a string) and neighbouring keys give unrelated streams;
* :func:`seeded_generator` is a ``torch.Generator`` on a device seeded from such keys — what every
  module that needs its own reproducible stream asks for (training steps, evaluation batches,
  epochs of a sampler, corruption draws, smoothing samples);
* :func:`forked_global_rng` lets a model's own randomness (train-mode Dropout draws from the global
  RNG) follow an attack's generator without touching the caller's global stream.

It lives in ``attacks/``, the lowest layer, so that every layer above may import it.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["forked_global_rng", "mix_seed", "seeded_generator"]

Key = int | str


def mix_seed(*keys: Key) -> int:
    """One seed in ``[0, 2⁶³)`` from ``keys`` (ints, or strings such as a salt ``"order"``).

    ``mix_seed(seed, step, rank)`` is the blake2b digest (8 bytes, little endian, top bit
    dropped) of ``"seed-step-rank"``. Ints are written in decimal (a bool or a float is refused:
    write ``int(x)`` where that is meant).
    """
    parts = []
    for k in keys:
        if isinstance(k, str):
            parts.append(k)
        elif isinstance(k, bool | float):
            raise TypeError(f"mix_seed: keys are ints or strings, got {k!r}")
        else:
            parts.append(str(operator.index(k)))
    digest = hashlib.blake2b("-".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seeded_generator(*keys: Key, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default CPU) seeded with :func:`mix_seed` ``(*keys)``."""
    gen = torch.Generator(device=torch.device("cpu" if device is None else device))
    gen.manual_seed(mix_seed(*keys))
    return gen


@contextmanager
def forked_global_rng(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Make the model's own randomness (train-mode Dropout draws from the global RNG)
    reproducible from ``generator``: inside, the global RNG of ``device`` is seeded from one draw
    of ``generator``; outside, its state is exactly as before (``fork_rng``), so the caller's
    global stream is neither read nor advanced. No-op without a generator."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device.type == "cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(seed)
        yield
