"""Training-loop settings from a trainer's config section."""

from __future__ import annotations

from dataclasses import fields

from cxrgen.train.loop import LoopConfig


def loop_config(section: dict, seed: int, **overrides) -> LoopConfig:
    """The shared loop's settings (:class:`LoopConfig` fields present in ``section``, e.g. ``max_steps``,
    ``checkpoint_every``, ``mixed_precision``) with ``seed``; keyword overrides win (e.g. ``stop_after_steps``)."""
    names = {f.name for f in fields(LoopConfig)}
    settings = {k: v for k, v in section.items() if k in names}
    return LoopConfig(**{**settings, "seed": int(seed), **overrides})
