"""The registry of matrix-level scalar measures, ``MEASURES`` (name -> function of X, Y).

Every registered function takes ``(X, Y, **params)`` and returns a float, and carries a
``similarity`` attribute: ``True`` when higher means more similar (``linear_cka``,
``debiased_cka``, ``rbf_cka``, ``mean_cca``, ``svcca``), ``False`` for a distance where lower
means more similar (``procrustes``). Use :func:`is_similarity` rather than assuming.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from richrep.errors import ConfigError
from richrep.registry import Registry

MeasureFn = Callable[..., float]
F = TypeVar("F", bound=MeasureFn)

MEASURES: Registry[MeasureFn] = Registry("measure", skip=2)


def register_measure(name: str, *, similarity: bool) -> Callable[[F], F]:
    """Register ``fn`` in :data:`MEASURES` as ``name`` and mark its direction."""

    def deco(fn: F) -> F:
        fn.similarity = similarity  # type: ignore[attr-defined]
        return MEASURES.register(name)(fn)

    return deco


def is_similarity(measure: str | MeasureFn) -> bool:
    """True when higher values of ``measure`` mean more similar (False for distances).

    Unregistered callables count as similarities unless they carry ``similarity = False``.
    """
    fn = MEASURES.entry(measure).fn if isinstance(measure, str) else measure
    return bool(getattr(fn, "similarity", True))


def resolve(measure: str | MeasureFn, params: dict[str, Any]) -> Callable[[Any, Any], float]:
    """A two-argument function for ``measure`` (a registered name or a callable) and ``params``.

    Parameters of a registered name are validated (a bad one raises :class:`ConfigError`).
    """
    if isinstance(measure, str):
        fn = MEASURES.entry(measure).fn
        checked = MEASURES.validate(measure, params)
        return lambda x, y: float(fn(x, y, **checked))
    if not callable(measure):
        raise ConfigError(f"measure must be a registered name or a callable; got {measure!r}")
    return lambda x, y: float(measure(x, y, **params))
