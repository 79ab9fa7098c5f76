"""pytest-xdist scheduling: the tests of one engine x device count go to one xdist worker.

Every (engine, device count) has its own worker subprocess (runner.executor), and starting
one is the expensive part of a run (torch_xla imports in about 6.5 s). Under xdist's plain
``load`` scheduling every xdist worker gets tests of every count and starts a subprocess
for each: with ``-n 2 --devices 1,2,4,8`` that is eight starts instead of four. This
scheduler hands out whole groups instead: all tests ``[xla-n4-...]`` are one work unit, so
each engine x device count is started once per run. With fewer groups than xdist workers,
groups are cut into parts (one start each) so that no worker stays idle.

It groups by reading the test id; ids stay exactly as they are (xdist's ``loadgroup``
appends ``@group`` to them, which breaks stable ids and ``--lf``). Tests that are not
shardspec cases (and a spec file's ``::file`` item) are each a unit of their own, handed
out as ``load`` would. Used for ``-n`` with the default ``--dist load``; any other
``--dist`` mode gets xdist's own scheduler.
"""

from __future__ import annotations

import re
from typing import Any

from xdist.scheduler import LoadScopeScheduling

from .spec import ENGINES, SUFFIXES

# FILE::CASE[ENGINE-nN] or FILE::CASE[ENGINE-nN-grad|nograd] (runner.expand.Variant.name)
_VARIANT = re.compile(r"\[(?P<engine>[a-z]+)-n(?P<n>[0-9]+)(?:-(?:grad|nograd))?\]$")
GROUP_PREFIX = "shardspec:"


def group_of(nodeid: str) -> str | None:
    """``"xla-n4"`` for a shardspec case's test id, else None."""
    file, sep, rest = nodeid.partition("::")
    if not sep or not file.endswith(SUFFIXES):
        return None
    match = _VARIANT.search(rest)
    if match is None or match["engine"] not in ENGINES:
        return None
    return f"{match['engine']}-n{match['n']}"


_SCOPE_N = re.compile(GROUP_PREFIX + r"[a-z]+-n([0-9]+)")
MIN_PART = 10  # tests: a part of a group pays its own engine start, so none is smaller


def split_groups(collection: list[str], workers: int) -> dict[str, str]:
    """With fewer groups than workers (``-n 4`` at one device count), each group is cut
    into consecutive parts so that every worker gets some, at one engine start per part;
    else nothing is cut. Returns nodeid -> its part ("xla-n4/2")."""
    groups: dict[str, list[str]] = {}
    for nodeid in collection:
        group = group_of(nodeid)
        if group is not None:
            groups.setdefault(group, []).append(nodeid)
    if not groups or len(groups) >= workers:
        return {}
    wanted = -(-workers // len(groups))  # parts per group, rounded up
    parts: dict[str, str] = {}
    for group, ids in groups.items():
        count = max(1, min(wanted, len(ids) // MIN_PART))
        size = -(-len(ids) // count)
        for i, nodeid in enumerate(ids):
            parts[nodeid] = f"{group}/{i // size + 1}"
    return parts


MIN_PENDING = 2  # an xdist worker runs a test once it knows the next one (or must stop)
START_GUESS = 5.0  # seconds to start an engine worker, until one was timed (torch_xla ~4.5 s)
MIN_GAIN = 2.0  # seconds a stolen share must exceed the thief's engine start by


class EngineScheduling(LoadScopeScheduling):
    """``LoadScopeScheduling`` whose scope of a case's test is its engine x device count.

    Units are handed out heaviest first (the largest device count, then the most tests),
    so the longest groups start first and the small ones fill in. With fewer groups than
    workers, groups are cut into parts (:func:`split_groups`), so no worker stays idle.
    When nothing is left to hand out, an idle worker takes the tail of the group with the
    most time left (xdist's ``steal``), if that saves time after starting its engine: the
    tests' durations so far tell how long the rest will take, and how long a start takes.
    """

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self._index: dict[Any, dict[str, int]] = {}  # node -> nodeid -> its collection index
        self._parts: dict[str, str] | None = None  # nodeid -> its part, for split groups
        # case (the test id without its [variant]) -> scope -> seconds its test took there;
        # a node's first test of a group is left out (it paid the engine's start)
        self._took: dict[str, dict[str, float]] = {}
        self._done: dict[str, list[str]] = {}  # scope -> the cases timed in it
        self._starts: dict[str, list[float]] = {}  # engine group -> first tests' durations
        self._started: dict[Any, set[str]] = {}  # node -> engine groups it has run tests of
        self._steals: dict[Any, tuple[Any, str]] = {}  # victim -> (thief, scope), in flight
        self._refused: set[Any] = set()  # thieves whose steal came too late: they stop

    # -- timing: what the tests so far say about the rest --

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        nodeid = self.registered_collections[node][item_index]
        group = group_of(nodeid)
        if group is not None:
            started = self._started.setdefault(node, set())
            if group in started:
                scope = self._split_scope(nodeid)
                case = nodeid.rpartition("[")[0]
                self._took.setdefault(case, {})[scope] = duration
                self._done.setdefault(scope, []).append(case)
            else:  # this node's first test of the group: it paid the engine's start
                started.add(group)
                self._starts.setdefault(group, []).append(duration)
        super().mark_test_complete(node, item_index, duration)

    def _estimates(self, scope: str, pending: list[str]) -> list[float] | None:
        """Seconds each pending test of ``scope`` will take (None: nothing timed there yet).

        A case costs about the same at every engine and count, up to a factor (the cases
        of a file sit together, and files differ a lot): each pending test is estimated by
        its case's time in the other groups, times how this group's timed tests compared
        with theirs; a case timed nowhere else gets this group's mean."""
        done = self._done.get(scope)
        if not done:
            return None

        def elsewhere(case: str) -> float | None:
            times = [t for other, t in self._took.get(case, {}).items() if other != scope]
            return sum(times) / len(times) if times else None

        mean = sum(self._took[case][scope] for case in done) / len(done)
        pairs = [(self._took[case][scope], elsewhere(case)) for case in done]
        here = sum(t for t, other in pairs if other is not None)
        there = sum(other for _, other in pairs if other is not None)
        factor = here / there if there > 0 else None
        out = []
        for nodeid in pending:
            other = elsewhere(nodeid.rpartition("[")[0])
            out.append(other * factor if other is not None and factor is not None else mean)
        return out

    def _start_cost(self, group: str) -> float:
        firsts = self._starts.get(group)
        return min(firsts) if firsts else START_GUESS  # the first test's own time is small

    # -- when nothing is left to hand out: steal --

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down:
            return
        if self.workqueue:
            super()._reschedule(node)
            return
        if self._pending_of(self.assigned_work[node]) >= MIN_PENDING:
            return  # busy: it decides when it runs low
        if any(thief is node for thief, _ in self._steals.values()):
            return  # its stolen tests are on their way
        if node not in self._refused and self._steal_for(node):
            return
        node.shutdown()

    def _steal_for(self, thief: Any) -> bool:
        """Ask the node whose group has the most time left for the tail of it, sized so
        that both end together: start + taken = left - taken."""
        best: tuple[float, Any, str, list[str]] | None = None
        for victim, units in self.assigned_work.items():
            if victim is thief or victim in self._steals:
                continue
            for scope, unit in units.items():
                pending = [nodeid for nodeid, done in unit.items() if not done]
                group = group_of(pending[0]) if pending else None
                seconds = self._estimates(scope, pending) if group is not None else None
                if not seconds:
                    continue
                started = group in self._started.get(thief, ())
                start = 0.0 if started else self._start_cost(group)
                share = (sum(seconds) - start) / 2
                # the tail worth ``share`` seconds; the victim keeps what it runs next
                count, taken_seconds = 0, 0.0
                for t in reversed(seconds[MIN_PENDING:]):
                    if taken_seconds + t > share:
                        break
                    taken_seconds += t
                    count += 1
                # what the thief takes must outweigh its start: the cores its engine start
                # uses are the ones the victim runs on (measured: a 3 s start for a 6 s
                # share gained nothing on 2 cores)
                if share >= start + MIN_GAIN and count > 0 and (best is None or share > best[0]):
                    best = (share, victim, scope, pending[-count:])
        if best is None:
            return False
        _, victim, scope, taken = best
        index = self._index_of(victim)
        victim.send_steal([index[nodeid] for nodeid in taken])
        self._steals[victim] = (thief, scope)
        return True

    def remove_pending_tests_from_node(self, node: Any, indices: Any) -> None:
        """The victim's answer to a steal: the tests it gave up (none if it had already
        started on them) go to the thief."""
        thief, scope = self._steals.pop(node)
        if not indices:
            self._refused.add(thief)
            self._reschedule(thief)
            return
        taken = [self.registered_collections[node][i] for i in indices]
        unit = self.assigned_work[node][scope]
        if thief.shutting_down or thief not in self.assigned_work:  # it went away meanwhile
            node.send_runtest_some(list(indices))
            return
        for nodeid in taken:
            del unit[nodeid]
        self.assigned_work[thief].setdefault(scope, {}).update(dict.fromkeys(taken, False))
        index = self._index_of(thief)
        thief.send_runtest_some([index[nodeid] for nodeid in taken])

    def _index_of(self, node: Any) -> dict[str, int]:
        index = self._index.get(node)
        if index is None:
            index = {nodeid: i for i, nodeid in enumerate(self.registered_collections[node])}
            self._index[node] = index
        return index

    def _split_scope(self, nodeid: str) -> str:
        group = group_of(nodeid)
        if group is None:
            return nodeid
        if self._parts is None and self.collection is not None:
            self._parts = split_groups(self.collection, self.numnodes)
        part = (self._parts or {}).get(nodeid)
        return GROUP_PREFIX + (part or group)

    @staticmethod
    def _weight(item: tuple[str, dict[str, bool]]) -> tuple[int, int]:
        """Which unit goes first: the largest device count (its tests cost the most), then
        the most tests; the longest jobs first leaves the short ones to even out the end."""
        scope, work_unit = item
        match = _SCOPE_N.match(scope)
        return (int(match[1]) if match else 0), len(work_unit)

    def _assign_work_unit(self, node: Any) -> None:
        """As LoadScopeScheduling does, but the heaviest unit first (:meth:`_weight`), and
        the collection index looked up in a map (``list.index`` per test is quadratic in
        a large group)."""
        assert self.workqueue
        scope, _ = max(self.workqueue.items(), key=self._weight)
        work_unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        index = self._index_of(node)
        node.send_runtest_some(
            [index[nodeid] for nodeid, completed in work_unit.items() if not completed]
        )


def make_scheduler(config: Any, log: Any = None) -> EngineScheduling | None:
    """The scheduler for ``--dist load`` (what ``-n`` uses by default); None otherwise."""
    if getattr(config.option, "dist", None) != "load":
        return None
    return EngineScheduling(config, log)
