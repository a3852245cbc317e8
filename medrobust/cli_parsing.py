"""A jsonargparse work-around the medrobust CLI needs, applied when the CLI is built.

When a command-line flag changes the model's arguments, jsonargparse re-checks nested
``{class_path, init_args}`` values such as ``net`` and builds a parser for their class path with
the model's extra keyword arguments, ``linked_targets`` among them (our
``data → model.init_args.data_info`` link). For a *function* class path — the torchvision
detection builders, ``torchvision.models.resnet18``, our ``tiny_fcos`` —
``add_function_arguments`` does not take that keyword and the whole parse fails with
"unexpected keyword argument 'linked_targets'". Functions have no linked targets, so
:func:`accept_linked_targets_for_functions` drops the keyword for them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["accept_linked_targets_for_functions"]


def accept_linked_targets_for_functions() -> None:
    """Make ``ArgumentParser.add_function_arguments`` ignore ``linked_targets`` (idempotent)."""
    from jsonargparse import ArgumentParser  # defines its own copy of the method

    original = ArgumentParser.add_function_arguments
    if getattr(original, "_medrobust_shim", False):
        return

    def add_function_arguments(self: Any, function: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("linked_targets", None)
        return original(self, function, *args, **kwargs)

    add_function_arguments._medrobust_shim = True  # type: ignore[attr-defined]
    ArgumentParser.add_function_arguments = add_function_arguments  # type: ignore[method-assign]
