"""The xdist scheduler (runner.scheduler): one engine x device count per xdist worker."""

from __future__ import annotations

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
