"""SPEC 3.5 on PostgreSQL: a reader tailing the feed while 8 writers append (two stores, as
two server processes would be) sees every position exactly once, in order."""

from __future__ import annotations

import threading

from ledger.services import Ledger
from tests.conftest import settings_for
from tests.helpers import declared, parties, post, registered, unique


def test_a_tailing_reader_sees_every_position_once_in_order(postgres_url, clock):
    processes = [Ledger.open(settings_for(postgres_url), clock=clock) for _ in range(2)]
    cast = parties(processes[0])
    maker = cast["maker"]
    per_writer, writers = 150, 8
    done = threading.Event()
    seen: list[int] = []

    def writer(index: int):
        ledger = processes[index % 2]
        batch = unique(f"W{index}")
        post(ledger, maker, registered(batch))
        for round_ in range(per_writer - 1):
            if round_ % 10 == 0:
                post(ledger, maker, declared(batch), declared(batch, licence_id="L-2"))
            else:
                post(ledger, maker, declared(batch))

    def reader():
        after = 0
        while True:
            finished = done.is_set()
            page = processes[1].store.feed(after=after, limit=50)
            seen.extend(event.position for event in page)
            if page:
                after = page[-1].position
            elif finished:
                return

    tail = threading.Thread(target=reader)
    tail.start()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    tail.join()
    total = processes[0].store.count()
    assert total > writers * per_writer
    assert seen == list(range(1, total + 1))
    for ledger in processes:
        ledger.close()
