"""Synthesis methods: each turns seed rows (or nothing) into candidate rows for verification.

Every method runs with any :class:`~curation.synth.teachers.Teacher` and batches its requests, so a
model backend sees one ``generate`` call per step. The procedural teacher answers only what
rules can answer exactly (arithmetic, unit conversions); for the other methods it replies
"unsupported", and those candidates are rejected with that reason rather than faked.

One module per method, each registering a function with :func:`synthesis_method` together with its
settings model (a :class:`MethodSettings` subclass). The registration is all there is: the project
file's ``synthesis.methods`` is validated against the settings model, the method runs in its ``order``,
and ``docs/synthesis-methods.md`` lists it (``distillery reference``).
Adding a method is one new module here plus its test; the package imports every module in it.
"""

from __future__ import annotations

import importlib
import pkgutil

from curation.synth.methods.base import MethodSettings, SeedInstructionSettings, SynthContext
from curation.synth.methods.registry import (
    REGISTRY,
    SynthesisMethod,
    generate_candidates,
    methods_reference,
    registered_methods,
    select_seeds,
    synthesis_method,
    validate_methods,
)


def _import_method_modules() -> None:
    # Modules whose name starts with "_" are private helpers, not methods.
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_method_modules()

__all__ = [
    "REGISTRY",
    "MethodSettings",
    "SeedInstructionSettings",
    "SynthContext",
    "SynthesisMethod",
    "generate_candidates",
    "methods_reference",
    "registered_methods",
    "select_seeds",
    "synthesis_method",
    "validate_methods",
]
