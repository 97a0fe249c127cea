"""Splitting a pot of money among participants, pro rata to their contributions, in whole minor units.

:func:`allocate` is the largest-remainder (Hamilton) method on exact rational arithmetic:

1. Only positive contributions take part; a zero or negative contribution (a vehicle that did not
   help, or that made things worse) gets ``0``; its effect is already in the pot, which the
   site-level measurement produced.
2. Each participant's quota is ``|pot| * contribution / sum(positive contributions)``; each gets the
   quota rounded down, and the minor units left over go one each to the largest fractional
   remainders, ties broken by key ascending (keys must be sortable). The parts always sum exactly
   to the pot.
3. A negative pot (a net penalty the drivers share) is allocated the same way on its magnitude and
   every part negated, so ``allocate(-p, c) == {k: -v for k, v in allocate(p, c).items()}``: the
   largest contributor carries the largest share of the penalty, rounded the same way.
4. A pot of ``0`` gives everyone ``0``. A non-zero pot with no positive contribution raises
   :class:`AllocationError` (nobody to pay: the caller decides, e.g. books it to the platform).

Example: 10000 minor units among three equal contributors ``1, 2, 3`` gives
``{1: 3334, 2: 3333, 3: 3333}``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)


class AllocationError(ValueError):
    """A pot that cannot be allocated as asked (nobody contributed, or a contribution is not finite)."""


def _exact(key: object, value: float | Decimal) -> Fraction:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise AllocationError(f"contribution of {key!r} is {value}; contributions must be finite")
        return Fraction(value)
    if not math.isfinite(value):
        raise AllocationError(f"contribution of {key!r} is {value}; contributions must be finite")
    return Fraction(value)


def allocate(pot_minor: int, contributions: Mapping[K, float | Decimal]) -> dict[K, int]:
    """Split ``pot_minor`` [minor currency units] among ``contributions``' keys (module doc).

    Returns one entry per key of ``contributions`` (``0`` for non-positive contributions); the
    values sum exactly to ``pot_minor``.
    """
    if isinstance(pot_minor, bool) or not isinstance(pot_minor, int):
        raise AllocationError(f"pot_minor must be an integer number of minor units, not {pot_minor!r}")
    weights = {key: _exact(key, value) for key, value in contributions.items()}
    shares: dict[K, int] = dict.fromkeys(contributions, 0)
    if pot_minor == 0:
        return shares
    positive = {key: weight for key, weight in weights.items() if weight > 0}
    if not positive:
        raise AllocationError(
            f"cannot allocate a pot of {pot_minor} minor units: none of the {len(contributions)} "
            "participants has a positive contribution"
        )
    total = sum(positive.values(), Fraction(0))
    magnitude = abs(pot_minor)
    remainders: list[tuple[Fraction, Any]] = []
    for key, weight in positive.items():
        quota = magnitude * weight / total
        whole = math.floor(quota)
        shares[key] = whole
        remainders.append((quota - whole, key))
    left = magnitude - sum(shares.values())
    # Largest remainder first; equal remainders by key ascending.
    ordered = sorted(remainders, key=lambda item: (-item[0], item[1]))
    for _, key in ordered[:left]:
        shares[key] += 1
    if pot_minor < 0:
        return {key: -share for key, share in shares.items()}
    return shares
