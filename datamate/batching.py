"""Micro-batching for the retrieval service: concurrent searches of one dataset with the same parameters are
answered by one embedding call and one Milvus search over all their queries.

Most of a search's CPU is per call, not per query (the model run, the search RPC, opening Milvus Lite), so on a
busy service a batch of eight costs far less than eight searches. Batches form while a search is in flight: a
request that finds nothing running for its key runs at once in its own thread (no timer, so a lone request waits
for nothing); requests arriving meanwhile queue, and when the running search finishes the first of them runs the
whole queue as one call. Leader/follower: no thread of its own, every call runs in one of the callers' threads.
"""

import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Batch:
    items: list = field(default_factory=list)
    turn: threading.Event = field(default_factory=threading.Event)  # set when a queued batch may run
    done: threading.Event = field(default_factory=threading.Event)
    results: Sequence | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Key:
    running: int = 0
    waiting: deque[_Batch] = field(default_factory=deque)


class Batcher:
    """`run(key, items, call)` returns `call(items)`, computed together with the items of concurrent calls of the
    same key: one `call(all items)` that must return one result per item, in order. At most `max_items` items go
    into one call (a caller's own items are never split) and at most `in_flight` calls per key run at once; an
    error of a call is raised to every caller whose items it held."""

    def __init__(self, max_items: int = 32, in_flight: int = 1):
        self.max_items, self.in_flight = max_items, in_flight
        self._lock = threading.Lock()
        self._keys: dict[Hashable, _Key] = {}

    def run(self, key: Hashable, items: Sequence, call: Callable[[list], Sequence]) -> list:
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            if state.running < self.in_flight:
                state.running += 1
                batch, queued = _Batch(), False
            elif state.waiting and len(state.waiting[-1].items) + len(items) <= self.max_items:
                batch, queued = state.waiting[-1], True
            else:
                batch, queued = _Batch(), True
                state.waiting.append(batch)
            leads = not batch.items  # the first caller of a batch runs it
            start = len(batch.items)
            batch.items.extend(items)
        if leads:
            if queued:
                batch.turn.wait()
            self._run(key, batch, call)
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return list(batch.results[start : start + len(items)])

    def _run(self, key: Hashable, batch: _Batch, call: Callable[[list], Sequence]) -> None:
        try:
            batch.results = call(list(batch.items))
            if len(batch.results) != len(batch.items):
                raise RuntimeError(f"a batched call returned {len(batch.results)} results for {len(batch.items)} "
                                   "items")
        except BaseException as error:  # noqa: BLE001 - handed to every caller of the batch, raised by each
            batch.error = error
        finally:
            with self._lock:
                state = self._keys[key]
                if state.waiting:  # the next batch takes this one's place (closed now: nothing joins it)
                    state.waiting.popleft().turn.set()
                else:
                    state.running -= 1
                    if not state.running:
                        del self._keys[key]
            batch.done.set()

    def queued(self) -> int:
        """Items waiting for a running call to finish, over every key (for tests and logs)."""
        with self._lock:
            return sum(len(batch.items) for state in self._keys.values() for batch in state.waiting)

