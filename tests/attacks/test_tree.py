"""attacks/tree.py: the one walker over batch structures (tree_map, tree_leaves, select_rows)."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import Tensor

from attacks.tree import select_rows, tree_leaves, tree_map

Pair = namedtuple("Pair", ["a", "b"])


def nested() -> dict:
    return {"image": torch.arange(6.0).reshape(3, 2), "index": torch.tensor([4, 5, 6]),
            "boxes": [torch.zeros(1, 4), torch.ones(2, 4), torch.zeros(0, 4)],
            "meta": {"name": "case", "spacing": (0.1, 0.1), "pair": Pair(torch.ones(3), 7)},
            "note": None}


def test_tree_map_keeps_the_structure_and_non_tensor_leaves() -> None:
    batch = nested()
    out = tree_map(lambda t: t * 2, batch)
    assert set(out) == set(batch)
    assert torch.equal(out["image"], batch["image"] * 2)
    assert isinstance(out["boxes"], list) and [b.shape for b in out["boxes"]] == [
        (1, 4), (2, 4), (0, 4)]
    assert torch.equal(out["boxes"][1], torch.full((2, 4), 2.0))
    assert out["meta"]["name"] == "case" and out["meta"]["spacing"] == (0.1, 0.1)
    assert isinstance(out["meta"]["pair"], Pair)  # namedtuples keep their type
    assert torch.equal(out["meta"]["pair"].a, torch.full((3,), 2.0)) and out["meta"]["pair"].b == 7
    assert out["note"] is None
    assert torch.equal(batch["image"], torch.arange(6.0).reshape(3, 2))  # the input is untouched


def test_tree_map_on_a_bare_tensor_and_on_plain_values() -> None:
    assert torch.equal(tree_map(torch.neg, torch.ones(2)), -torch.ones(2))
    assert tree_map(torch.neg, 3) == 3 and tree_map(torch.neg, "x") == "x"
    assert tree_map(torch.neg, (1, [2])) == (1, [2])


def test_tree_map_detach_and_device_moves_reach_every_tensor() -> None:
    w = torch.ones(3, requires_grad=True)
    out = {"logits": w * 2, "aux": [w + 1, (w - 1,)]}
    detached = tree_map(Tensor.detach, out)
    assert not any(t.requires_grad for t in tree_leaves(detached))
    assert all(t.requires_grad for t in tree_leaves(out))
    moved = tree_map(lambda t: t.to(torch.float64), out)
    assert [t.dtype for t in tree_leaves(moved)] == [torch.float64] * 3


def test_tree_leaves_in_container_order() -> None:
    leaves = list(tree_leaves(nested()))
    assert len(leaves) == 2 + 3 + 1
    assert torch.equal(leaves[0], torch.arange(6.0).reshape(3, 2))
    assert torch.equal(leaves[1], torch.tensor([4, 5, 6]))
    assert list(tree_leaves([1, "a", None])) == []


def test_select_rows_picks_per_sample_entries_only() -> None:
    batch = nested()
    batch["scale"] = torch.tensor(2.0)       # a scalar: not per sample
    batch["classes"] = torch.arange(5)        # another length: not per sample
    out = select_rows(batch, torch.tensor([2, 0]), size=3)
    assert torch.equal(out["image"], torch.tensor([[4.0, 5.0], [0.0, 1.0]]))
    assert torch.equal(out["index"], torch.tensor([6, 4]))
    assert [b.shape[0] for b in out["boxes"]] == [0, 1]  # the list is the per-sample axis
    assert torch.equal(out["scale"], batch["scale"]) and torch.equal(out["classes"], torch.arange(5))
    assert out["meta"]["name"] == "case" and out["note"] is None


@pytest.mark.parametrize("inference", [True, False])
def test_attacks_clone_only_inference_tensors(inference: bool) -> None:
    from attacks.tree import clone_inference

    if inference:
        with torch.inference_mode():
            target = {"mask": torch.ones(2, 1, 4, 4), "label": [torch.tensor(1)]}
    else:
        target = {"mask": torch.ones(2, 1, 4, 4), "label": [torch.tensor(1)]}
    out = clone_inference(target)
    assert not any(t.is_inference() for t in tree_leaves(out))
    assert (out is target) is (not inference)  # nothing to clone: the same object, no copy
