"""One seeded-RNG helper (attacks.seeding): the key mixer is blake2b of the keys joined by '-',
the same in every process; the streams that used that mixer before it was shared (training
steps, smoothing samples, epoch order) are unchanged; the model's own randomness follows an
attack's generator without touching the caller's global stream."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from attacks import PGD
from attacks.seeding import forked_global_rng, mix_seed, seeded_generator


def _blake2b_seed(text: str) -> int:
    """The 63-bit seed the training methods, the smoothing sampler and the epoch sampler
    computed before they shared :func:`mix_seed` (blake2b of a '-'-joined key)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def test_mix_seed_is_blake2b_of_the_joined_keys() -> None:
    assert mix_seed(3, 120, 1) == _blake2b_seed("3-120-1")  # a method's (seed, step, rank)
    assert mix_seed("smoothing", 0, 17) == _blake2b_seed("smoothing-0-17")  # a smoothing sample
    assert mix_seed(2**62, 4, "order") == _blake2b_seed(f"{2**62}-4-order")  # an epoch's order
    assert mix_seed(0, 0, -1, -1) == _blake2b_seed("0-0--1--1")
    assert 0 <= mix_seed(1) < 2**63 and mix_seed(0, 17, 3, 5) != mix_seed(0, 17, 3, 4)
    assert mix_seed(torch.tensor(5), 2) == mix_seed(5, 2)  # integer tensors are integers


@pytest.mark.parametrize("key", [True, 1.5])
def test_mix_seed_refuses_keys_that_are_not_ints_or_strings(key: object) -> None:
    with pytest.raises(TypeError, match="keys are ints or strings"):
        mix_seed(0, key)  # type: ignore[arg-type]


def test_seeded_generator_is_the_generator_of_the_mixed_seed() -> None:
    reference = torch.Generator().manual_seed(_blake2b_seed("7-2-0"))
    gen = seeded_generator(7, 2, 0)
    assert gen.device == torch.device("cpu")
    assert torch.equal(torch.rand(8, generator=gen), torch.rand(8, generator=reference))
    assert not torch.equal(torch.rand(8, generator=seeded_generator(7, 2, 1)),
                           torch.rand(8, generator=seeded_generator(7, 2, 0)))


def test_mix_seed_is_the_same_in_every_process() -> None:
    """Unlike ``hash`` of a tuple with a string, which Python salts per process."""
    code = "from attacks.seeding import mix_seed; print(mix_seed('order', 0, 17, 3))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": s}).stdout.strip() for s in ("1", "2")}
    assert outs == {str(mix_seed("order", 0, 17, 3))}


def test_forked_global_rng_follows_the_generator_and_restores_the_global_stream() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with forked_global_rng(seeded_generator(1), torch.device("cpu")):
        a = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), before)  # neither read nor advanced
    with forked_global_rng(seeded_generator(1), torch.device("cpu")):
        b = torch.rand(4)
    assert torch.equal(a, b)
    with forked_global_rng(None, torch.device("cpu")):  # no generator: the global stream itself
        c = torch.rand(4)
    torch.random.set_rng_state(before)
    assert torch.equal(c, torch.rand(4))


def test_train_mode_dropout_in_an_attack_follows_its_generator() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    atk = PGD(eps=0.05, steps=3, dropout_mode="train")
    state = torch.random.get_rng_state()
    first = atk(model, x, y, generator=seeded_generator(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, atk(model, x, y, generator=seeded_generator(5)))
    assert not torch.equal(first, atk(model, x, y, generator=seeded_generator(6)))
