"""In-flight counts shared by all workers of one Gunicorn master.

Admission caps and least-outstanding routing must see what *every* worker has sent to a
backend: the kernel hands connections to workers unevenly (one worker often accepts a whole
burst), so a per-worker share of the cap would answer 429 while the backend has room, and a
per-worker view of load would pile onto one engine.

The master creates a table of counters in anonymous shared memory before it forks:
one row per worker slot, one column per backend. A worker writes only its own row (so no
locks are needed) and reads a column's sum. Two workers admitting at the same instant can
overshoot a cap by at most ``workers - 1``: the cap is soft by that much.

Without Gunicorn (a single process) there is no table and counts are process-local.
"""

from __future__ import annotations

import mmap

MAX_BACKENDS = 128
"""Columns of the table; backends past this count are counted per process only."""


class InflightTable:
    def __init__(self, slots: int, columns: int = MAX_BACKENDS) -> None:
        self.slots = slots
        self.columns = columns
        self._mm = mmap.mmap(-1, slots * columns * 8)  # MAP_SHARED | MAP_ANONYMOUS
        self.view = memoryview(self._mm).cast("q")

    def total(self, column: int) -> int:
        return sum(self.view[column :: self.columns])

    def set(self, slot: int, column: int, value: int) -> None:
        self.view[slot * self.columns + column] = value

    def clear_slot(self, slot: int) -> None:
        start = slot * self.columns
        self.view[start : start + self.columns] = memoryview(bytes(self.columns * 8)).cast("q")


class SlotAllocator:
    """Hands out table rows to workers (in the master) and clears a dead worker's row."""

    def __init__(self, table: InflightTable) -> None:
        self.table = table
        self._free = list(range(table.slots))

    def take(self) -> int | None:
        return self._free.pop(0) if self._free else None

    def give_back(self, slot: int) -> None:
        self.table.clear_slot(slot)
        self._free.append(slot)
        self._free.sort()


# Set in the master (gunicorn_conf) before each fork; each worker inherits its own values.
TABLE: InflightTable | None = None
SLOT: int | None = None
# Engine-reported load beyond this gateway's own requests, one cell per backend, written by
# the one worker that holds the poller lock (inferstack.gateway.loadreport), read by all.
REPORTED: InflightTable | None = None
POLLER_LOCK: str | None = None
"""Path of the file whose lock elects that worker."""


class ReportedCell:
    """One backend's engine-reported load from elsewhere: in the shared row when there is one
    (every worker reads what the elected worker wrote), else process-local."""

    __slots__ = ("_column", "_local", "_table")

    def __init__(self, column: int) -> None:
        self._local = 0
        self._table = REPORTED if column < MAX_BACKENDS else None
        self._column = column

    def get(self) -> int:
        return self._table.view[self._column] if self._table is not None else self._local

    def set(self, value: int) -> None:
        self._local = value
        if self._table is not None:
            self._table.view[self._column] = value


class InflightCounter:
    """One backend's in-flight count: this worker's share written to the table, total read."""

    __slots__ = ("_cell", "_column", "_local", "_table")

    def __init__(self, column: int) -> None:
        self._local = 0
        table = TABLE if SLOT is not None and column < MAX_BACKENDS else None
        self._table = table
        self._column = column
        self._cell = (SLOT or 0) * (table.columns if table else 0) + column

    def add(self, delta: int) -> None:
        self._local += delta
        if self._table is not None:
            self._table.view[self._cell] = self._local

    @property
    def mine(self) -> int:
        return self._local

    def total(self) -> int:
        if self._table is None:
            return self._local
        return self._table.total(self._column)
