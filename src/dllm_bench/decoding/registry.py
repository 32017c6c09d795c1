"""Plugins by name: the cache and decoding-rule registries, and the typed-arguments base class.

A plugin is a keyword-only dataclass whose fields are its arguments; ``check()`` validates them
when the object is built (a one-line ``ValueError`` naming the bad value), so a bad argument fails
before any model is loaded or any forward runs. A module registers its class with
``@CACHES.register("name")`` / ``@RULES.register("name")``; ``build`` makes one from a name plus
keyword arguments, with "Did you mean" for misspelled names and the valid arguments listed for
unknown ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import ClassVar


@dataclass(kw_only=True)
class Plugin:
    """Base of caches and rules: typed arguments (dataclass fields), validated at construction."""

    name: ClassVar[str] = "?"
    kind: ClassVar[str] = "plugin"
    # for the contract tests (tests/test_contract.py), which test every registered plugin:
    example_args: ClassVar[dict] = {}       # valid arguments that make a tiny model take several steps
    bad_args: ClassVar[tuple[dict, ...]] = ()  # argument sets that must fail at construction

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise a one-line ValueError naming a bad argument value."""

    @classmethod
    def arg_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def args(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.args().items())
        return f"{self.kind} {self.name!r}" + (f" ({inner})" if inner else "")


def did_you_mean(value, valid) -> str:
    near = difflib.get_close_matches(str(value), list(valid), n=1)
    return f" Did you mean: {near[0]}?" if near else ""


class Registry:
    """name -> plugin class, for one kind ("cache" or "decoding")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        def deco(cls):
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._classes[name].__qualname__}")
            cls.name, cls.kind = name, self.kind
            self._classes[name] = cls
            return cls
        return deco

    def names(self) -> list[str]:
        return list(self._classes)

    def __iter__(self):
        return iter(self._classes)

    def __contains__(self, name) -> bool:
        return name in self._classes

    def __getitem__(self, name: str) -> type:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self._classes)}.{did_you_mean(name, self._classes)}")
        return self._classes[name]

    def unregister(self, name: str) -> None:
        self._classes.pop(name, None)

    def build(self, spec, **kwargs):
        """An instance from a name (+ its keyword arguments), a plugin class, or an instance (as is)."""
        if isinstance(spec, Plugin):
            if kwargs:
                raise ValueError(f"arguments {sorted(kwargs)} given with an already built {spec.describe()}")
            return spec
        cls = spec if isinstance(spec, type) else self[spec]
        unknown = [k for k in kwargs if k not in cls.arg_names()]
        if unknown:
            k = unknown[0]
            raise ValueError(f"unknown argument {k}={kwargs[k]!r} for {self.kind} {cls.name!r}; valid: "
                             f"{', '.join(cls.arg_names()) or 'none'}.{did_you_mean(k, cls.arg_names())}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{self.kind} {cls.name!r} needs argument(s): {', '.join(missing)}")
        return cls(**kwargs)


CACHES = Registry("cache")
RULES = Registry("decoding")


# --------------------------------------------------------------------------- argument checks
def check_number(name: str, value, *, lo=None, hi=None, lo_open=False, hi_open=False, integer=False,
                 allow_none=False) -> None:
    """One-line ValueError unless ``value`` is a finite number within the bounds."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        v = float(value)
        ok = math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
    if not ok:
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo}, "
        hi_s = "" if hi is None else f"{hi}" + (")" if hi_open else "]")
        rng = f" in {lo_s or '(-inf, '}{hi_s or 'inf)'}" if lo is not None or hi is not None else ""
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind}{rng}, got {value!r}")


def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}.{did_you_mean(value, valid)}")


def from_spec(registry: Registry, spec) -> Plugin:
    """A plugin from a config mapping: ``{"name": ..., "_target_": "pkg.Class", **args}``.

    ``_target_`` (a dotted class path, as Hydra's ``instantiate`` reads it) wins over ``name``;
    without it ``name`` is looked up in the registry. When both are given they must agree.
    A string is a name without arguments; a built plugin is returned as is.
    """
    if isinstance(spec, (str, Plugin)):
        return registry.build(spec)
    args = dict(spec)
    name, target = args.pop("name", None), args.pop("_target_", None)
    if target is None:
        if name is None:
            raise ValueError(f"{registry.kind} config needs a 'name' or a '_target_'")
        return registry.build(name, **args)
    import importlib

    module, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{registry.kind} _target_ {target!r} cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise ValueError(f"{registry.kind} _target_ {target!r} is not a plugin class")
    if name is not None and name != cls.name:
        raise ValueError(f"{registry.kind} name {name!r} does not match _target_ {target!r} (registered as {cls.name!r})")
    return registry.build(cls, **args)


# --------------------------------------------------------------------------- golden files
GOLDEN_ADAPTERS: dict = {}


def golden_adapter(method: str):
    """Register the function that maps one case of a golden file of ``method`` (its ``params``,
    in the reference's own argument names) to ``generate`` keyword arguments. It may also set
    ``attention_mask`` and ``expect_stats`` ({stat: value} compared with ``GenerationResult.stats``).
    Lives beside the plugin it exercises; ``dllm_bench.replay`` finds it by the file's ``method``."""
    def deco(fn):
        GOLDEN_ADAPTERS[method] = fn
        return fn
    return deco
