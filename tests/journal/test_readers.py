"""Per-thread reader connections: one per thread, fresh again after close()."""

from __future__ import annotations

import threading

from actors.readers import ThreadReaders
from palyra.journal.store import JournalSettings, open_writer_connection


def test_each_thread_gets_its_own_reader_and_close_does_not_leave_a_dead_one(tmp_path):
    open_writer_connection(tmp_path, JournalSettings()).close()  # a migrated journal
    readers = ThreadReaders(tmp_path, JournalSettings())
    mine = readers.conn()
    assert readers.conn() is mine
    theirs: list = []
    worker = threading.Thread(target=lambda: theirs.append(readers.conn()))
    worker.start()
    worker.join(5)
    assert theirs and theirs[0] is not mine

    readers.close()
    fresh = readers.conn()
    assert fresh is not mine
    assert fresh.execute("SELECT count(*) FROM journal_events").fetchone() == (0,)
    readers.close()
