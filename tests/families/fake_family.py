"""Registering a family spec for a test's fake model: a fake must declare its family like any real one."""

from __future__ import annotations

from dataclasses import replace

from memprune.families import FamilySpec, get_family, known_families, register_family


def register_fake_family(name: str, like: str = "rar", **changes: object) -> FamilySpec:
    """A non-runnable spec named ``name`` with the views, prefixes and sampling of the real family ``like``."""
    if name in known_families():
        return known_families()[name]
    # never detected in place of the real family: required keys no checkpoint has, no tokenizer signature
    fields = dict(name=name, display_name=name, loader=None, load_options=(), required_keys=(f"{name}.fake",),
                  tokenizer_detect=None)
    spec = replace(get_family(like), **(fields | changes))
    return register_family(spec)
