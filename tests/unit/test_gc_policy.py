"""The worker's garbage-collector policy: what a batch leaves is frozen out of the young collections, and cyclic
garbage frozen with it is still collected once memory has grown by a quarter."""
import gc
import sys
import weakref

import pytest

from runtime.gc_policy import WORKER_GC_THRESHOLDS, GcPolicy


@pytest.fixture
def collector():
    """The process's collector as it was, after the test (the policy changes global state)."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    def __init__(self):
        self.other = self


def in_a_generation(obj) -> bool:
    return any(any(o is obj for o in gc.get_objects(generation)) for generation in range(3))


def test_a_batch_s_survivors_are_kept_out_of_every_generation(collector):
    policy = GcPolicy(check_s=3600)
    policy.start()
    assert gc.get_threshold() == WORKER_GC_THRESHOLDS
    kept = [[n] for n in range(1000)]  # what a batch leaves: state, rows waiting for the flush
    assert in_a_generation(kept[0])
    policy.after_batch()
    assert gc.get_count()[0] == 0 and not in_a_generation(kept[0]) and gc.is_tracked(kept[0])
    assert gc.get_freeze_count() > len(kept)


def test_cyclic_garbage_frozen_with_a_batch_is_collected_once_memory_grew_by_a_quarter(collector):
    policy = GcPolicy(check_s=0)
    policy.start()
    cycle = Node()
    gone = weakref.ref(cycle)
    del cycle
    policy.after_batch()  # memory has not grown: frozen, garbage and all
    assert gone() is not None and policy.full_collections == 1
    grown = [(n, str(n)) for n in range(sys.getallocatedblocks() // 3)]  # a third more blocks
    policy.after_batch()
    assert gone() is None and policy.full_collections == 2 and len(grown)


def test_the_policy_does_nothing_until_started(collector):
    policy = GcPolicy(check_s=0)
    kept = [[n] for n in range(10)]
    policy.after_batch()
    policy.collect()
    assert in_a_generation(kept[0]) and policy.full_collections == 0
