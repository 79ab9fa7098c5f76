"""pytest-xdist scheduling: the tests of one engine x device count go to one xdist worker.

Every (engine, device count) has its own worker subprocess (runner.executor), and starting
one is the expensive part of a run (torch_xla imports in about 6.5 s). Under xdist's plain
``load`` scheduling every xdist worker gets tests of every count and starts a subprocess
for each: with ``-n 2 --devices 1,2,4,8`` that is eight starts instead of four. This
scheduler hands out whole groups instead: all tests ``[xla-n4-...]`` are one work unit, so
each engine x device count is started once per run.

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


class EngineScheduling(LoadScopeScheduling):
    """``LoadScopeScheduling`` whose scope of a case's test is its engine x device count.

    Units are handed out heaviest first (the largest device count, then the most tests),
    so the longest groups start first and the small ones fill in.
    """

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self._index: dict[Any, dict[str, int]] = {}  # node -> nodeid -> its collection index

    def _split_scope(self, nodeid: str) -> str:
        group = group_of(nodeid)
        return GROUP_PREFIX + group if group is not None else nodeid

    @staticmethod
    def _weight(item: tuple[str, dict[str, bool]]) -> tuple[int, int]:
        """Which unit goes first: the largest device count (its tests cost the most), then
        the most tests; the longest jobs first leaves the short ones to even out the end."""
        scope, work_unit = item
        group = scope.removeprefix(GROUP_PREFIX) if scope.startswith(GROUP_PREFIX) else ""
        n = int(group.rsplit("-n", 1)[1]) if group else 0
        return n, len(work_unit)

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
