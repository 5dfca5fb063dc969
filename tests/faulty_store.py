"""A VectorStore wrapper that fails on purpose: chosen exceptions on chosen calls of chosen methods.

It stands where the network would fail. With ``retry=``, each call runs through the same
``call_with_retries`` loop the Qdrant adapter uses, so a transient fault is retried exactly as a
real timeout would be; without it, faults reach the caller directly (e.g. a ``StoreError`` that
says the retries ran out, or a ``KeyboardInterrupt`` to stop a job halfway)::

    store = FaultyStore(open_store(tmp_path / "db"), retry=RetryPolicy(attempts=3, base_delay=0))
    store.fail("upsert", ConnectionError("refused"), times=2)   # the first two upsert calls
    store.fail("scroll", StoreError("db: scroll failed"), calls=[3])   # only the third scroll
    store.calls["upsert"]   # how many upsert calls (attempts) reached the wrapper
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from safeclip_sdk.integrations.base import VectorStore
from safeclip_sdk.integrations.retry import RetryPolicy, builtin_transient_reason, call_with_retries

ErrorFactory = BaseException | Callable[[], BaseException]


@dataclass
class _Fault:
    error: ErrorFactory
    calls: frozenset[int] | None  # 1-based call numbers; None = every call after `after`
    after: int
    times: int | None

    def hits(self, number: int) -> bool:
        if self.calls is not None:
            return number in self.calls
        if number <= self.after:
            return False
        return self.times is None or number <= self.after + self.times

    def make(self) -> BaseException:
        return self.error() if callable(self.error) and not isinstance(self.error, BaseException) else self.error


class FaultyStore(VectorStore):
    """Forwards every call to ``inner`` unless a fault registered with :meth:`fail` matches it."""

    def __init__(self, inner: VectorStore, *, retry: RetryPolicy | None = None):
        self.inner = inner
        self.name = f"faulty {inner.name}"
        self.retry = retry
        self.calls: Counter[str] = Counter()
        self._faults: dict[str, list[_Fault]] = {}

    def fail(self, method: str, error: ErrorFactory, *, calls: Iterable[int] | None = None,
             times: int | None = None, after: int = 0) -> FaultyStore:
        """Raise ``error`` (an exception, or a function making one) on calls of ``method``.

        ``calls`` picks call numbers (1-based); otherwise the calls after the first ``after``,
        ``times`` of them (all of them when ``times`` is None).
        """
        if not callable(getattr(VectorStore, method, None)):
            raise ValueError(f"VectorStore has no method {method!r}")
        rule = _Fault(error, frozenset(calls) if calls is not None else None, after, times)
        self._faults.setdefault(method, []).append(rule)
        return self

    def heal(self) -> None:
        """Drop every fault: the store works again (the call counts stay)."""
        self._faults.clear()

    def _forward(self, method: str, *args, **kwargs):
        def attempt():
            self.calls[method] += 1
            for rule in self._faults.get(method, ()):
                if rule.hits(self.calls[method]):
                    raise rule.make()
            return getattr(self.inner, method)(*args, **kwargs)

        if self.retry is None:
            return attempt()
        return call_with_retries(attempt, what=method, store=self.name, policy=self.retry,
                                 classify=builtin_transient_reason)

    def __getattr__(self, name):  # adapter-specific extras (e.g. QdrantStore.local) pass through
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r})"

    def collection_exists(self, name):
        return self._forward("collection_exists", name)

    def list_collections(self):
        return self._forward("list_collections")

    def vector_specs(self, collection):
        return self._forward("vector_specs", collection)

    def create_collection(self, name, vectors, *, like=None):
        return self._forward("create_collection", name, vectors, like=like)

    def drop_collection(self, name):
        return self._forward("drop_collection", name)

    def alias_target(self, alias):
        return self._forward("alias_target", alias)

    def switch_alias(self, alias, collection):
        return self._forward("switch_alias", alias, collection)

    def delete_alias(self, alias):
        return self._forward("delete_alias", alias)

    def count(self, collection):
        return self._forward("count", collection)

    def scroll(self, collection, *, start=None, limit=256, with_vectors=False, with_payload=True):
        return self._forward("scroll", collection, start=start, limit=limit, with_vectors=with_vectors,
                             with_payload=with_payload)

    def retrieve(self, collection, ids, *, with_vectors=False):
        return self._forward("retrieve", collection, ids, with_vectors=with_vectors)

    def upsert(self, collection, points):
        return self._forward("upsert", collection, points)

    def delete(self, collection, ids):
        return self._forward("delete", collection, list(ids))

    def query(self, collection, vector, *, using="", limit=10, payload_range=None):
        return self._forward("query", collection, vector, using=using, limit=limit, payload_range=payload_range)

    def read_state(self, key):
        return self._forward("read_state", key)

    def write_state(self, key, state):
        return self._forward("write_state", key, state)

    def delete_state(self, key):
        return self._forward("delete_state", key)

    def close(self):
        return self._forward("close")
