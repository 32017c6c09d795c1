"""Decoding rules, one file each; importing this package registers the built-in ones."""
from .base import Rule, even_quota, first_plus, top_k
from . import eb_sampler, factor, fixed, klass, random_order, threshold, wino  # noqa: F401  (registration)

__all__ = ["Rule", "even_quota", "first_plus", "top_k"]
