"""filtered: cleaners that edit rows (encoding, HTML residue, PII, whitespace) and filters that drop
them with a reason (quality heuristics, language, policy and licences), run by one runner.

Every module of this package is imported here, so each filter and cleaner registers itself
(:mod:`curation.filter.base`) as soon as any part of the package is used, and a step added in a
new module needs no import list updated anywhere.
"""

import importlib
import pkgutil


def _import_every_module() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_every_module()
