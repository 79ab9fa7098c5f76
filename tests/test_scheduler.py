"""The xdist scheduler (runner.scheduler): one engine x device count per xdist worker."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest
from _files import write

from runner.scheduler import EngineScheduling, group_of, make_scheduler


@pytest.mark.parametrize(
    ("nodeid", "group"),
    [
        ("specs/a.yaml::rows[xla-n4-grad]", "xla-n4"),
        ("specs/a.yaml::rows[xla-n4-nograd]", "xla-n4"),
        ("specs/sub/b.yml::mlp[native-n8]", "native-n8"),
        ("specs/a.yaml::dup@3[xla-n16-grad]", "xla-n16"),
        ("specs/a.yaml::file", None),  # a spec file's own item
        ("tests/test_x.py::test_y[xla-n4]", None),  # a Python test with a look-alike id
        ("specs/a.yaml::rows[tpu-n4]", None),
        ("specs/a.yaml::rows", None),
    ],
)
def test_group_of_reads_the_test_id(nodeid: str, group: str | None) -> None:
    assert group_of(nodeid) == group


class FakeNode:
    """What the scheduler sees of an xdist worker."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def scheduler(workers: int) -> EngineScheduling:
    option = SimpleNamespace(
        dist="load", numprocesses=workers, tx=[f"{workers}*popen"], loadscopereorder=True
    )
    config = SimpleNamespace(option=option, getoption=lambda name: getattr(option, name, None))
    config.getvalue = config.getoption
    return EngineScheduling(config)  # type: ignore[arg-type]


def run_all(sched: EngineScheduling, nodes: list[FakeNode]) -> dict[str, list[str]]:
    """Drive the scheduler as xdist's DSession does; which node ran which test."""
    ran: dict[str, list[str]] = defaultdict(list)
    done: dict[FakeNode, int] = defaultdict(int)
    progress = True
    while progress:
        progress = False
        for node in nodes:
            while done[node] < len(node.sent):
                index = node.sent[done[node]]
                done[node] += 1
                ran[node.gateway.id].append(sched.collection[index])
                sched.mark_test_complete(node, index)
                progress = True
    return ran


def test_each_engine_and_count_goes_to_one_worker() -> None:
    ids = [
        f"specs/{f}.yaml::{case}[{engine}-n{n}{flag}]"
        for f in ("a", "b")
        for case in ("rows", "cols", "mesh")
        for engine in ("xla", "native")
        for n in (1, 2, 4, 8)
        for flag in ("-grad", "-nograd")
    ]
    ids += ["specs/c.yaml::file", "tests/test_x.py::test_one", "tests/test_x.py::test_two"]
    sched = scheduler(2)
    nodes = [FakeNode("gw0"), FakeNode("gw1")]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, ids)
    sched.schedule()
    # the heaviest groups first: the largest device count of each engine
    first = {group_of(sched.collection[node.sent[0]]) for node in nodes}
    assert first == {"xla-n8", "native-n8"}
    ran = run_all(sched, nodes)
    assert sorted(t for tests in ran.values() for t in tests) == sorted(ids)  # each once
    assert sched.tests_finished
    where: dict[str, set[str]] = defaultdict(set)
    for worker, tests in ran.items():
        for test in tests:
            where[group_of(test) or test].add(worker)
    assert all(len(workers) == 1 for workers in where.values()), where
    groups = {g for g in where if re.fullmatch(r"(xla|native)-n\d+", g)}
    assert len(groups) == 8
    assert len(ran) == 2  # both workers got work


def test_fewer_groups_than_workers_are_cut_into_parts() -> None:
    ids = [f"specs/a.yaml::c{i:02d}[xla-n4-grad]" for i in range(40)]
    ids += [f"specs/a.yaml::tiny{i}[native-n4]" for i in range(5)]  # too few to cut
    sched = scheduler(3)
    nodes = [FakeNode(f"gw{i}") for i in range(3)]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, ids)
    sched.schedule()
    ran = run_all(sched, nodes)
    assert sorted(t for tests in ran.values() for t in tests) == sorted(ids)  # each once
    assert sched.tests_finished
    assert len(ran) == 3  # every worker got work
    workers_of_xla = {w for w, tests in ran.items() for t in tests if "[xla-" in t}
    assert len(workers_of_xla) == 2  # 40 tests: two parts of 20 (each part >= MIN_PART)
    workers_of_native = {w for w, tests in ran.items() for t in tests if "[native-" in t}
    assert len(workers_of_native) == 1
    for tests in ran.values():  # a part is consecutive: files stay together
        xla = [t for t in tests if "[xla-" in t]
        assert xla == sorted(xla)


START = 5.0  # simulated seconds an engine worker takes to start


class TimedNode(FakeNode):
    """A simulated xdist worker: runs its queue in order, answers steals as xdist does."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.steals: list[list[int]] = []
        self.done = 0
        self.clock = 0.0
        self.groups: set[str] = set()

    def send_steal(self, indices: list[int]) -> None:
        self.steals.append(list(indices))


def simulate(
    sched: EngineScheduling, nodes: list[TimedNode], refuse: bool = False
) -> tuple[dict[str, list[str]], float]:
    """Run the collection on simulated clocks (1 s a test, START for a node's first test
    of a group); which node ran which test, and when the last one ended."""
    ran: dict[str, list[str]] = defaultdict(list)

    def call(now: float, fn, *args) -> None:
        idle = {node for node in nodes if node.done >= len(node.sent)}
        fn(*args)
        for node in nodes:  # steals are answered at once: all requested, or none
            while node.steals:
                wanted = node.steals.pop(0)
                queued = node.sent[node.done :]
                give = not refuse and all(i in queued for i in wanted)
                if give:
                    node.sent = node.sent[: node.done] + [i for i in queued if i not in wanted]
                sched.remove_pending_tests_from_node(node, wanted if give else [])
        for node in idle:  # work that arrives for an idle node starts now
            if node.done < len(node.sent):
                node.clock = max(node.clock, now)

    while True:
        ready = [node for node in nodes if node.done < len(node.sent)]
        if not ready:
            return ran, max(node.clock for node in nodes)
        node = min(ready, key=lambda n: n.clock)
        index = node.sent[node.done]
        node.done += 1
        nodeid = sched.collection[index]
        group = group_of(nodeid) or nodeid
        seconds = 1.0 + (START if group not in node.groups else 0.0)
        node.groups.add(group)
        node.clock += seconds
        ran[node.gateway.id].append(nodeid)
        call(node.clock, sched.mark_test_complete, node, index, seconds)


def steal_setup() -> tuple[EngineScheduling, list[TimedNode], list[str]]:
    ids = [f"specs/a.yaml::big{i:02d}[xla-n8-grad]" for i in range(60)]
    ids += [f"specs/a.yaml::mid{i:02d}[xla-n4-grad]" for i in range(12)]
    ids += [f"specs/a.yaml::small{i}[xla-n1-grad]" for i in range(10)]
    sched = scheduler(2)
    nodes = [TimedNode("gw0"), TimedNode("gw1")]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, ids)
    sched.schedule()
    return sched, nodes, ids


def test_an_idle_worker_takes_the_tail_of_the_longest_group() -> None:
    sched, nodes, ids = steal_setup()
    ran, end = simulate(sched, nodes)
    assert sorted(t for tests in ran.values() for t in tests) == sorted(ids)  # each once
    assert sched.tests_finished
    assert all(node.shutting_down for node in nodes)
    # gw0 runs the big group (65 s); gw1 the others (17 s + 15 s), then the big group's
    # tail, paying a start: both end at about 52 s instead of 65 s
    assert any("[xla-n8" in t for t in ran["gw1"])
    assert not any("[xla-n4" in t or "[xla-n1" in t for t in ran["gw0"])
    assert end <= 53


def test_a_refused_steal_stops_the_thief_and_loses_nothing() -> None:
    sched, nodes, ids = steal_setup()
    ran, end = simulate(sched, nodes, refuse=True)
    assert sorted(t for tests in ran.values() for t in tests) == sorted(ids)
    assert sched.tests_finished
    assert end == 65.0  # the big group ran where it started
    assert not any("[xla-n8" in t for t in ran["gw1"])


def test_other_dist_modes_keep_xdists_scheduler() -> None:
    for dist in ("loadscope", "loadfile", "loadgroup", "worksteal", "each", "no"):
        config = SimpleNamespace(option=SimpleNamespace(dist=dist))
        assert make_scheduler(config) is None
    config = SimpleNamespace(option=SimpleNamespace(dist="load", numprocesses=2, tx=["2*popen"]))
    config.getoption = lambda name: getattr(config.option, name, None)
    config.getvalue = config.getoption
    assert isinstance(make_scheduler(config), EngineScheduling)


# --- through pytest-xdist itself: no worker subprocess is needed for skipped cases -----------

SKIPPED_EVERYWHERE = """
version: 1
cases:
  - id: big_mesh
    requires: {min_devices: 64}
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [n, 2], requires_grad: [true, false]}
  - id: wide_mesh
    requires: {min_devices: 64}
    mesh: [n]
    placements: [Replicate()]
    input: {shape: [2, 2]}
"""

BROKEN = """
version: 1
cases:
  - id: bad_placement
    mesh: [n]
    placements: [Shard(x)]
    input: {shape: [n, 2]}
"""


def workers_of(result: pytest.RunResult) -> dict[str, str]:
    """Test id -> the xdist worker that ran it, from -v output ('[gw0] SKIPPED id')."""
    out = {}
    for line in result.outlines:
        match = re.match(r"\[(gw\d+)\].*? (\S+::\S+)\s*$", line)
        if match:
            out[match[2]] = match[1]
    return out


def test_under_xdist_ids_stay_and_groups_share_a_worker(pytester: pytest.Pytester) -> None:
    write(pytester, "specs/a.yaml", SKIPPED_EVERYWHERE)
    write(pytester, "specs/b.yaml", SKIPPED_EVERYWHERE)
    result = pytester.runpytest("-n", "2", "-v", "--devices", "1,2,4,8", "-p", "no:randomly")
    result.assert_outcomes(skipped=24)
    ran = workers_of(result)
    assert len(ran) == 24
    assert not any("@" in nodeid for nodeid in ran)  # no loadgroup suffix
    assert "specs/a.yaml::big_mesh[xla-n4-grad]" in ran
    by_group: dict[str, set[str]] = defaultdict(set)
    for nodeid, worker in ran.items():
        by_group[group_of(nodeid)].add(worker)
    assert set(by_group) == {"xla-n1", "xla-n2", "xla-n4", "xla-n8"}
    assert all(len(workers) == 1 for workers in by_group.values()), by_group


def test_last_failed_works_under_xdist(pytester: pytest.Pytester) -> None:
    write(pytester, "specs/a.yaml", SKIPPED_EVERYWHERE)
    write(pytester, "specs/broken.yaml", BROKEN)
    first = pytester.runpytest("-n", "2", "--devices", "1,2", "-p", "no:randomly")
    first.assert_outcomes(skipped=6, failed=2)
    again = pytester.runpytest("-n", "2", "--devices", "1,2", "--lf", "-v", "-p", "no:randomly")
    again.assert_outcomes(failed=2)
    assert sorted(workers_of(again)) == [
        "specs/broken.yaml::bad_placement[xla-n1-nograd]",
        "specs/broken.yaml::bad_placement[xla-n2-nograd]",
    ]


def test_under_xdist_engines_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.executor import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert "OMP_NUM_THREADS" not in worker_env()  # no xdist: torch's own choice
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    cores = len(os.sched_getaffinity(0))
    assert worker_env()["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    assert worker_env()["OMP_NUM_THREADS"] == "3"
