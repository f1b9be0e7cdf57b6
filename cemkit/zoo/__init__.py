"""Model zoo: shipped and user model cards, a verified download cache, and spec resolution.

>>> from cemkit.zoo import resolve
>>> path = resolve("zoo:cem500k_mocov2_resnet50")   # downloads once, then uses the cache
"""

from cemkit.zoo.cache import cache_root, is_offline
from cemkit.zoo.cards import ModelCard, Normalisation, all_cards, get_card, read_card
from cemkit.zoo.download import download, sha256_file
from cemkit.zoo.registry import (
    ZOO_PREFIX,
    cached_path,
    encoder_weights,
    fetch,
    register,
    resolve,
)
from cemkit.models.references import register_resolver


def _resolve_reference(spec: str):
    return resolve(spec)  # looked up at call time, so a patched ``cemkit.zoo.resolve`` is used


register_resolver(ZOO_PREFIX, _resolve_reference)  # the stages resolve ``zoo:NAME`` through this

__all__ = [
    "ZOO_PREFIX",
    "ModelCard",
    "Normalisation",
    "all_cards",
    "cache_root",
    "cached_path",
    "download",
    "encoder_weights",
    "fetch",
    "get_card",
    "is_offline",
    "read_card",
    "register",
    "resolve",
    "sha256_file",
]
