"""n ranks of DTensor in one process, on torch's threaded process group, reused across calls.

``ThreadedWorld(n)`` starts n rank threads once and keeps them. Each ``run(fn, timeout)``
gives every rank a fresh default process group (backend ``"threaded"``, a new store), runs
``fn(rank)`` on all of them, tears the group down again and returns the results in rank
order. ``DeviceMesh("cpu", ...)`` made inside ``fn`` therefore works on every call, and no
process-group state leaks from one call into the next.

Measured on torch 2.9 (200 calls of distribute_tensor [8, 4] + full_tensor, world size 4,
median of 5): keeping the threads costs 1.4 ms a call, the cache clears included;
re-creating threads and group per call, as ``MultiThreadedTestCase`` does, 6 ms.

Things the caller must know:

- **What fn returns** should be plain data: the group is gone once fn returns, so a DTensor
  in the result can't run collectives. fn must let ``SystemExit`` through: it is how a
  rank waiting in a collective leaves when a peer failed or the call timed out.

- **Random inputs.** All ranks share one CPU generator, so ``torch.manual_seed`` + ``randn``
  on n threads at once interleaves and gives each rank other data. Every rank must build
  the same input: seed a private ``torch.Generator`` in ``fn`` (``randn(...,
  generator=g)``), the same seed on every rank. The caller picks the seed.
- **Not reentrant, one per process.** The threaded group's bookkeeping is process-global
  (``ProcessLocalGroup``, ``distributed_c10d._world``), so at most one world is open at a
  time, and ``run`` must not be called from inside ``fn``.
- **Failures.** A rank that raises wakes its peers; ``run`` raises ``RankFailed`` for the
  first one. Ranks that don't finish in ``timeout`` are woken and ``run`` raises
  ``RanksHung``. Either way the next ``run`` works. A rank that can't be woken (busy
  outside torch.distributed, e.g. in an endless loop) can't be stopped from Python: the
  world is then broken, and so is every later world in this process (``WorldBroken``):
  restart the process.

Only ``ThreadedWorld`` imports torch, so the exceptions can be imported torch-free.
"""

from __future__ import annotations

import contextlib
import importlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# After the timeout, woken ranks leave their collective or barrier within milliseconds; a
# rank still running after the grace is busy outside torch.distributed and can't be stopped.
_WAKE_GRACE = 5.0
_CLOSE_JOIN = 5.0
_STORE_SLICE = timedelta(milliseconds=50)

_active_lock = threading.Lock()
_active: ThreadedWorld | None = None
_poisoned: str | None = None  # why no world may be opened in this process any more


class ThreadedWorldUnavailable(RuntimeError):
    """torch lacks a piece of the threaded process group (torch.testing._internal moved)."""


class WorldBroken(RuntimeError):
    """A rank thread could not be stopped; this process can't run DTensor ranks any more."""


class RankFailed(Exception):
    """A rank raised; ``exc`` is the first rank's exception (peers were woken)."""

    def __init__(self, rank: int, exc: BaseException) -> None:
        super().__init__(f"rank {rank} raised {type(exc).__name__}: {exc}")
        self.rank = rank
        self.exc = exc


class RanksHung(Exception):
    """``ranks`` had not finished after ``seconds``; ``stuck`` could not even be woken."""

    def __init__(self, ranks: list[int], seconds: float, stuck: list[int] | None = None) -> None:
        stuck = stuck or []
        tail = f"; ranks {stuck} could not be woken, the world is broken" if stuck else ""
        super().__init__(
            f"ranks {ranks} of the threaded world did not finish in {seconds:g} s "
            f"(a rank skipped a collective its peers entered, or never returned){tail}"
        )
        self.ranks = ranks
        self.seconds = seconds
        self.stuck = stuck


def _torch_parts() -> SimpleNamespace:
    """The torch internals the world uses, checked up front so a moved one is named plainly."""

    def need(what: str, get: Callable[[], Any]) -> Any:
        try:
            return get()
        except (ImportError, AttributeError) as exc:
            version = getattr(sys.modules.get("torch"), "__version__", "?")
            raise ThreadedWorldUnavailable(
                f"the native engine runs DTensor ranks on torch's threaded process group, "
                f"but torch {version} has no {what} ({type(exc).__name__}: {exc}). "
                "shardspec was written against torch 2.9; this torch moved it."
            ) from exc

    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise ThreadedWorldUnavailable(
            f"torch {torch.__version__} was built without torch.distributed; "
            "the native engine needs it"
        )
    mtpg = need(
        "torch.testing._internal.distributed.multi_threaded_pg",
        lambda: importlib.import_module("torch.testing._internal.distributed.multi_threaded_pg"),
    )
    pg = need("multi_threaded_pg.ProcessLocalGroup", lambda: mtpg.ProcessLocalGroup)
    for attr in ("exception_handle", "reset", "_coll_lock"):
        need(f"ProcessLocalGroup.{attr}", lambda a=attr: getattr(pg, a))
    need(
        "torch.distributed.device_mesh.DeviceMesh",
        lambda: importlib.import_module("torch.distributed.device_mesh").DeviceMesh,
    )
    redistribute = need(
        "torch.distributed.tensor._redistribute",
        lambda: importlib.import_module("torch.distributed.tensor._redistribute"),
    )
    dtensor = need(
        "torch.distributed.tensor.DTensor",
        lambda: importlib.import_module("torch.distributed.tensor").DTensor,
    )
    propagator = need(
        "DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding",
        lambda: dtensor._op_dispatcher.sharding_propagator.propagate_op_sharding,
    )
    parts = SimpleNamespace(
        torch=torch,
        dist=dist,
        pg=pg,
        install=need("multi_threaded_pg._install_threaded_pg", lambda: mtpg._install_threaded_pg),
        uninstall=need(
            "multi_threaded_pg._uninstall_threaded_pg", lambda: mtpg._uninstall_threaded_pg
        ),
        isolate=need(
            "torch._C._distributed_c10d._set_thread_isolation_mode",
            lambda: torch._C._distributed_c10d._set_thread_isolation_mode,
        ),
        transform_cache=need(
            "torch.distributed.tensor._redistribute._gen_transform_infos.cache_clear",
            lambda: redistribute._gen_transform_infos.cache_clear,
        ),
        propagator=propagator,
        thread_world=need(
            "multi_threaded_pg.ThreadLocalWorld._world", lambda: mtpg.ThreadLocalWorld._world
        ),
        unregister_all=need(
            "distributed_c10d._unregister_all_process_groups",
            lambda: dist.distributed_c10d._unregister_all_process_groups,
        ),
    )
    # A per-thread cache (a threading.local): check the path from this thread; each rank
    # thread clears its own copy.
    need(
        "DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding.cache.cache_clear",
        lambda: propagator.cache.cache_clear,
    )
    if "threaded" not in dist.Backend.backend_list:
        raise ThreadedWorldUnavailable(
            "importing multi_threaded_pg did not register the 'threaded' backend"
        )
    need("torch.distributed.HashStore", lambda: dist.HashStore)
    parts.store = _abortable_store_class(dist)
    return parts


class _Woken(Exception):
    """Raised in a rank waiting in a store barrier when the call is abandoned."""


def _abortable_store_class(dist: Any) -> type:
    """A HashStore whose waits end when the call is aborted.

    Ranks waiting in the store barrier of ``init_process_group`` or ``new_group`` (a
    ``DeviceMesh`` of 2+ dims) are not woken by ``exception_handle``, and ``new_group``'s
    barrier times out after 30 minutes. Measured: one rank raising before a (2, 2) mesh
    left its peers there. The barrier retries on RuntimeError only, so ``_Woken`` ends it.
    """

    class AbortableStore(dist.Store):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.inner = dist.HashStore()
            self.aborted = threading.Event()

        def set(self, key: str, value: Any) -> None:
            self.inner.set(key, value)

        def get(self, key: str) -> bytes:
            return self.inner.get(key)

        def add(self, key: str, amount: int) -> int:
            return self.inner.add(key, amount)

        def compare_set(self, key: str, expected: Any, desired: Any) -> bytes:
            return self.inner.compare_set(key, expected, desired)

        def delete_key(self, key: str) -> bool:
            return self.inner.delete_key(key)

        def check(self, keys: list[str]) -> bool:
            return self.inner.check(keys)

        def num_keys(self) -> int:
            return self.inner.num_keys()

        def set_timeout(self, timeout: timedelta) -> None:
            self.inner.set_timeout(timeout)

        def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
            end = time.monotonic() + (timeout.total_seconds() if timeout else 1e9)
            while True:
                try:
                    # Short slices: HashStore.wait returns as soon as the keys exist.
                    self.inner.wait(keys, _STORE_SLICE)
                    return
                except RuntimeError:
                    if time.monotonic() >= end:
                        raise
                # Only a wait that can't end is cut short. A rank whose barrier completed
                # must finish init_process_group: one cut there left its group counter
                # advanced, and its next default group got another name than its peers'.
                if self.aborted.is_set() and not self.inner.check(keys):
                    raise _Woken("shardspec: the call was abandoned while a rank waited")

    return AbortableStore


class _Call(Generic[T]):
    """One ``run``: the job every rank thread picks up, and what came back."""

    def __init__(self, fn: Callable[[int], T], world_size: int, store: Any, timeout: float):
        self.fn = fn
        self.store = store
        self.timeout = timeout
        self.results: list[Any] = [None] * world_size
        self.done = [False] * world_size
        self.first: tuple[int, BaseException] | None = None
        self.woken = False  # set before the world wakes ranks: later exceptions are echoes
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.remaining = world_size

    def finish(self, rank: int) -> None:
        with self.lock:
            self.done[rank] = True
            self.remaining -= 1
            if self.remaining == 0:
                self.all_done.set()


class ThreadedWorld:
    """``world_size`` DTensor ranks as threads of this process; ``run`` calls fn on each."""

    def __init__(self, world_size: int, *, clear_caches: bool = True) -> None:
        """Start the rank threads. ``clear_caches=False`` exists only to test the pitfall."""
        global _active
        if world_size < 1:
            raise ValueError(f"world_size must be at least 1, not {world_size}")
        self._t = _torch_parts()
        with _active_lock:
            if _poisoned:
                raise WorldBroken(_poisoned)
            if _active is not None:
                raise RuntimeError(
                    "a ThreadedWorld is already open in this process; close it first "
                    "(the threaded process group is process-global)"
                )
            _active = self
        self.world_size = world_size
        self._clear = clear_caches
        self._closed = False
        self._broken: str | None = None
        self._run_lock = threading.Lock()
        # Autograd's multithreading flag is per thread; install turns it off here too.
        self._main_mt = self._t.torch.autograd.is_multithreading_enabled()
        self._t.isolate(True)  # c10d's group registry per thread: each rank has its own
        self._t.install()  # distributed_c10d._world becomes a per-thread world
        self._inboxes: list[queue.SimpleQueue[_Call[Any] | None]] = [
            queue.SimpleQueue() for _ in range(world_size)
        ]
        self._threads = [
            threading.Thread(
                target=self._serve, args=(rank,), name=f"shardspec-rank-{rank}", daemon=True
            )
            for rank in range(world_size)
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> ThreadedWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, fn: Callable[[int], T], timeout: float) -> list[T]:
        """Run ``fn(rank)`` on every rank inside a fresh threaded group; results by rank.

        Raises ``RankFailed`` (the first rank that raised), ``RanksHung`` (ranks not done
        in ``timeout`` seconds); the world stays usable after both.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if threading.current_thread() in self._threads:
            raise RuntimeError("ThreadedWorld.run called from inside a rank: it would deadlock")
        with self._run_lock:
            if self._closed:
                raise RuntimeError("this ThreadedWorld is closed")
            if self._broken:
                raise WorldBroken(self._broken)
            if self._clear:
                self._clear_shared_caches()
            # Every init_process_group wraps sys.excepthook once more (a "[rankN]:" prefix);
            # over thousands of calls the chain would grow without end.
            excepthook = sys.excepthook
            try:
                return self._dispatch(fn, timeout)
            finally:
                sys.excepthook = excepthook

    def _dispatch(self, fn: Callable[[int], T], timeout: float) -> list[T]:
        call: _Call[T] = _Call(fn, self.world_size, self._t.store(), timeout)
        for inbox in self._inboxes:
            inbox.put(call)
        hung: list[int] = []
        stuck: list[int] = []
        if not call.all_done.wait(timeout):
            with call.lock:
                hung = [r for r, done in enumerate(call.done) if not done]
            # Order matters: wake the waiters, let them leave, then reset.
            # Resetting first would clear the terminate flag before they see it.
            self._wake(call)
            call.all_done.wait(_WAKE_GRACE)
            with call.lock:
                stuck = [r for r, done in enumerate(call.done) if not done]
        self._t.pg.reset()  # drop finished or abandoned collectives, clear terminate
        if stuck:
            self._break(
                f"ranks {stuck} of the threaded world were still running "
                f"{timeout + _WAKE_GRACE:g} s after the call began and could not be "
                "woken; restart the process"
            )
        if call.first is not None:
            rank, exc = call.first
            raise RankFailed(rank, exc) from exc
        if hung:
            raise RanksHung(hung, timeout, stuck)
        return call.results

    def close(self) -> None:
        """Stop the rank threads and restore torch.distributed's process-wide state."""
        global _active
        if self._closed:
            return
        with self._run_lock:
            self._closed = True
            for inbox in self._inboxes:
                inbox.put(None)
            deadline = time.monotonic() + (0.0 if self._broken else _CLOSE_JOIN)
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(thread.is_alive() for thread in self._threads):
                self._break("rank threads did not stop when the world closed")
            self._t.uninstall()
            self._t.isolate(False)
            self._t.torch.autograd.set_multithreading_enabled(self._main_mt)
            with _active_lock:
                if _active is self:
                    _active = None

    def _break(self, why: str) -> None:
        global _poisoned
        self._broken = why
        with _active_lock:
            # A stuck rank thread may wake later and touch the process-global group.
            _poisoned = _poisoned or why

    def _clear_shared_caches(self) -> None:
        # DTensor caches redistribute plans and sharding decisions keyed by the mesh, whose
        # identity includes the thread id but not the rank. In one world each rank keeps its
        # thread, so the keys stay right (measured: 0 of 20 wrong without clears). A new
        # world's threads reuse old ids for other ranks and get plans made for another mesh
        # coordinate: uneven [Shard(0), Shard(0)] on (2, 4) went wrong in 18 of 19 new
        # worlds. Clearing costs next to nothing for small cases, so it is done every call.
        self._t.transform_cache()
        self._t.propagator.cache.cache_clear()  # this thread's copy; ranks clear theirs

    def _wake(self, call: _Call[Any]) -> None:
        """Wake every rank waiting in a collective (they leave with SystemExit)."""
        with call.lock:
            call.woken = True
        pg = self._t.pg
        # exception_handle iterates the collectives dict that starting ranks modify.
        with pg._coll_lock:
            pg.exception_handle(TimeoutError("shardspec: ranks woken after a timeout"))
        call.store.aborted.set()

    def _serve(self, rank: int) -> None:
        while (call := self._inboxes[rank].get()) is not None:
            try:
                self._run_rank(call, rank)
            finally:
                call.finish(rank)

    def _run_rank(self, call: _Call[Any], rank: int) -> None:
        dist = self._t.dist
        try:
            if self._clear:
                self._t.propagator.cache.cache_clear()  # thread-local: only this rank can
            self._reset_mesh_env()
            if dist.is_initialized():  # a previous call died before its own teardown
                dist.destroy_process_group()
            self._fresh_c10d_world()
            dist.init_process_group(
                backend="threaded",
                rank=rank,
                world_size=self.world_size,
                store=call.store,
                timeout=timedelta(seconds=max(call.timeout, 1.0)),
            )
            try:
                call.results[rank] = call.fn(rank)
            finally:
                dist.destroy_process_group()
                self._fresh_c10d_world()
        except BaseException as exc:  # SystemExit too: it is how woken ranks leave
            with call.lock:
                first = call.first is None and not call.woken
                if first:
                    call.first = (rank, exc)
                    call.woken = True
            if first:
                pg = self._t.pg
                with pg._coll_lock:
                    pg.exception_handle(exc)
                call.store.aborted.set()

    def _fresh_c10d_world(self) -> None:
        # This rank's c10d bookkeeping starts empty on every call, even after an
        # init_process_group or new_group that failed half-way: group names come from a
        # per-rank counter, and ranks whose counters differ wait for each other forever.
        vars(self._t.thread_world).pop("world", None)
        self._t.unregister_all()

    def _reset_mesh_env(self) -> None:
        # DeviceMesh keeps a per-thread stack of active meshes; a call that died inside
        # `with mesh:` would leave its mesh current for the next one.
        with contextlib.suppress(ImportError, AttributeError):
            from torch.distributed import device_mesh

            device_mesh._mesh_resources.__init__()
