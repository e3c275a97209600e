"""Random generator states as plain values, and gathered from every rank; no Lightning, so the data layer
(streamed rows keep their generators in checkpoints) imports it without the training stack."""

from __future__ import annotations

import random

import torch


def python_rng_state(rng=random) -> list:
    """A Python generator's state (the `random` module's, or a `random.Random`'s) as a plain list, so a
    checkpoint holding it still loads with weights_only=True."""
    _, internal, gauss = rng.getstate()
    return [*internal, gauss]


def set_python_rng_state(state: list, rng=random) -> None:
    """Put a Python generator back where `python_rng_state` found it."""
    *internal, gauss = state
    rng.setstate((3, tuple(internal), gauss))


def every_rank(state, world_size: int) -> list:
    """Every rank's `state`, in rank order (collective: each rank calls it together); [state] alone."""
    if world_size > 1 and torch.distributed.is_initialized():
        states: list = [None] * world_size
        torch.distributed.all_gather_object(states, state)
        return states
    return [state]
