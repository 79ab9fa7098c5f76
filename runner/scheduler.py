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


class EngineScheduling(LoadScopeScheduling):
    """``LoadScopeScheduling`` whose scope of a case's test is its engine x device count.

    Units are handed out heaviest first (the largest device count, then the most tests),
    so the longest groups start first and the small ones fill in. With fewer groups than
    workers, groups are cut into parts (:func:`split_groups`), so no worker stays idle.
    """

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self._index: dict[Any, dict[str, int]] = {}  # node -> nodeid -> its collection index
        self._parts: dict[str, str] | None = None  # nodeid -> its part, for split groups

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
        index = self._index.get(node)
        if index is None:
            index = {nodeid: i for i, nodeid in enumerate(self.registered_collections[node])}
            self._index[node] = index
        node.send_runtest_some(
            [index[nodeid] for nodeid, completed in work_unit.items() if not completed]
        )


def make_scheduler(config: Any, log: Any = None) -> EngineScheduling | None:
    """The scheduler for ``--dist load`` (what ``-n`` uses by default); None otherwise."""
    if getattr(config.option, "dist", None) != "load":
        return None
    return EngineScheduling(config, log)
