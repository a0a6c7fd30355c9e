"""User-facing errors: one clear line naming the fix, never a traceback."""

from __future__ import annotations


class LightMoEError(Exception):
    """An error whose message is meant for the user as it is (what is wrong and how to fix it)."""


class UnsupportedModelError(LightMoEError):
    """The model has no MoE layers that any registered adapter understands."""

