"""Capture a module's input (or output) with forward hooks that are always removed.

We never monkeypatch `forward`: a hook is the supported way in, and a context manager guarantees
the hook is gone even when the forward pass raises (including our own early stop).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class StopForward(Exception):
    """Raised from a hook to end the forward pass once the key is captured (skips lm_head)."""


class Capture:
    """Holds the most recent tensor seen by the hook; `.value` is (B, T, D)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.calls = 0

    def take(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("the key layer hook captured nothing: was the model run inside capture()?")
        return self.value


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """`model.layers.29.mlp` -> the module; a clear error when the path does not exist."""
    try:
        return model.get_submodule(path)
    except AttributeError as e:
        from retrieval.errors import InvalidInputError

        raise InvalidInputError(
            f"key layer {path!r} is not a module of {type(model).__name__}",
            "pass a module path from `model.named_modules()`, e.g. model.layers.11.mlp",
        ) from e


@contextmanager
def capture(module: nn.Module, *, output: bool = False, stop: bool = False) -> Iterator[Capture]:
    """Record the input (default) or output of `module` on every forward call.

    stop=True raises StopForward right after capturing, so a datastore build does not pay for
    the layers (and the lm_head) that come after the key layer; callers catch StopForward.
    """
    cap = Capture()

    def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        cap.value = x.detach()  # (B, T, D)
        cap.calls += 1
        if stop:
            raise StopForward

    def post_hook(_mod: nn.Module, _args: tuple, out: object) -> None:
        x = out[0] if isinstance(out, (tuple, list)) else out
        assert isinstance(x, torch.Tensor)
        cap.value = x.detach()  # (B, T, D)
        cap.calls += 1
        if stop:
            raise StopForward

    if output:
        handle = module.register_forward_hook(post_hook)
    else:
        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield cap
    finally:
        handle.remove()


def has_hooks(module: nn.Module) -> bool:
    """True while any forward hook is registered on `module` (tests check we leave none behind)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)
