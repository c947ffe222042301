"""The pending legs of one route, ordered by end time, so the joiner reads only those that can fit.

An upstream leg lies inside its client leg in time (`join._nests`): it ends after the client leg
started and, when both were answered, before the client leg ended. So of the legs pending under one
method and path, only those whose end falls in a window can be a new leg's partner, and with the legs
kept in end order, bisection finds that window in O(log n). Without it the joiner read every pending leg
of the route for each new one: quadratic when thousands of identical calls without request ids wait (a
capture worker's batch late, one leg never captured): 88 µs per call at 3,000 pending.

Legs without a response are kept apart and always returned: their ends are never compared.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Generic, TypeVar

__all__ = ["EndOrdered"]

T = TypeVar("T")


class EndOrdered(Generic[T]):
    __slots__ = ("_ends", "_items", "_open")

    def __init__(self) -> None:
        self._ends: list[float] = []  # ascending; _items[i] ends at _ends[i]
        self._items: list[T] = []
        self._open: list[T] = []  # unanswered: in every window

    def add(self, item: T, end: float, answered: bool) -> None:
        if not answered:
            self._open.append(item)
            return
        ends = self._ends
        # Legs arrive nearly in end order: the append is the usual case, the insert the exception.
        if not ends or end >= ends[-1]:
            ends.append(end)
            self._items.append(item)
        else:
            i = bisect_right(ends, end)
            ends.insert(i, end)
            self._items.insert(i, item)

    def remove(self, item: T, end: float, answered: bool) -> None:
        """Take `item` out (it must have been added with the same `end` and `answered`)."""
        if not answered:
            self._open.remove(item)
            return
        ends, items = self._ends, self._items
        i = bisect_left(ends, end)
        while items[i] is not item:  # legs ending at the same instant: the one that is `item`
            i += 1
        del ends[i], items[i]

    def window(self, lo: float, hi: float) -> list[T]:
        """The answered items ending in [lo, hi], oldest end first, then every unanswered one."""
        ends = self._ends
        found = self._items[bisect_left(ends, lo) : bisect_right(ends, hi)]
        if self._open:
            found += self._open
        return found

    def __len__(self) -> int:
        return len(self._items) + len(self._open)
