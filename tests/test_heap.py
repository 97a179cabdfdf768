"""The heap policy: what is alive frozen at each tick, cyclic garbage reclaimed at the full
collection, the clock driven by the test."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from inodewatch.heap import Heap


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test process collects as before


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A pair of objects that refer to each other: only the cyclic collector frees them."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_tick_freezes_what_is_alive_so_collections_skip_it():
    heap = Heap(now=0.0, period=3600.0)
    alive = cycle()
    assert heap.tick(1.0) is False
    assert gc.get_freeze_count() > 0
    gc.collect()  # the cycle is garbage now, but frozen: not walked
    assert alive() is not None


def test_the_full_collection_reclaims_frozen_cycles_once_a_period():
    heap = Heap(now=0.0, period=60.0)
    garbage = cycle()
    heap.tick(1.0)  # frozen
    gc.collect()
    assert garbage() is not None
    assert heap.tick(59.0) is False
    assert heap.tick(60.0) is True  # unfreeze, collect everything, freeze again
    assert garbage() is None
    assert gc.get_freeze_count() > 0
    assert heap.tick(100.0) is False
    assert heap.tick(120.0) is True  # the next one a period after the last


def test_objects_made_since_the_last_tick_are_collected_as_ever():
    heap = Heap(now=0.0, period=3600.0)
    heap.tick(1.0)
    young = cycle()
    gc.collect()
    assert young() is None
