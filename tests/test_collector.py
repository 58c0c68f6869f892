"""The cycle collector's pause around bulk work (ledger/collector.py)."""

from __future__ import annotations

import gc
import threading

import pytest

from ledger import collector


@pytest.fixture
def collecting():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_is_off_inside_a_pause_and_back_on_after(collecting):
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads_resume_only_when_the_last_ends(collecting):
    inside, release = threading.Event(), threading.Event()

    def other():
        with collector.paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with collector.paused():
        thread.start()
        assert inside.wait(10)
    assert not gc.isenabled(), "the other thread's pause is still running"
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off(collecting):
    gc.disable()
    with collector.paused():
        pass
    assert not gc.isenabled()


def test_the_collector_resumes_when_the_work_raises(collecting):
    with pytest.raises(RuntimeError), collector.paused():
        raise RuntimeError("the work failed")
    assert gc.isenabled()
