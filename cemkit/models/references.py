"""Named weights (``zoo:NAME``): accepted by the stages wherever a checkpoint path goes.

The stages sit below the model zoo and do not import it. The zoo registers its resolver here when
:mod:`cemkit.zoo` is imported (the ``cemkit`` CLI imports it before it runs a stage), and a stage
turns a ``zoo:NAME`` setting into a local file with :func:`resolve_reference`.

>>> import cemkit.zoo                                           # doctest: +SKIP
>>> resolve_reference("zoo:cem500k_mocov2_resnet50")            # doctest: +SKIP
PosixPath('~/.cache/cemkit/models/cem500k_mocov2_resnet50/...')
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cemkit.errors import ConfigError

_RESOLVERS: dict[str, Callable[[str], os.PathLike | str]] = {}


def register_resolver(prefix: str, resolver: Callable[[str], os.PathLike | str]) -> None:
    """Make ``resolve_reference`` send specs starting with ``prefix`` (e.g. ``"zoo:"``) to ``resolver``."""
    _RESOLVERS[prefix] = resolver


def is_reference(spec: object) -> bool:
    """Whether ``spec`` is a named reference (``zoo:NAME``) rather than a path."""
    return isinstance(spec, str) and spec.startswith("zoo:")


def resolve_reference(spec: str) -> Path:
    """The local file a named reference stands for.

    Raises
    ------
    ConfigError
        No resolver is registered for the reference's prefix (``import cemkit.zoo`` registers ``zoo:``).
    """
    for prefix, resolver in _RESOLVERS.items():
        if spec.startswith(prefix):
            return Path(resolver(spec))
    raise ConfigError(f"{spec}: no resolver for this name; import cemkit.zoo first (the cemkit command does)")
