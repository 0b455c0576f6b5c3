"""The thread rule: torch's threads follow the cores that are free (affinity, cgroup quota, other processes'
load, physical cores); ``train.threads`` and an explicit ``OMP_NUM_THREADS`` win. Every input is injected."""

from __future__ import annotations

import pytest
import torch

from tunelab import runtime
from tunelab.runtime import (
    CpuState,
    ThreadFollower,
    cgroup_cpu_quota,
    choose_threads,
    cpu_times,
    following_free_cores,
    others_busy_cores,
    physical_cores,
    pin_threads,
)


@pytest.mark.parametrize(
    "state, cores, busy, free, words",
    [
        (CpuState(cpus=2, physical_cores=2, others_busy=0.0), 2, 0, 2, "2 cores, idle"),
        (CpuState(cpus=2, physical_cores=2, others_busy=0.3), 2, 0, 2, "2 cores, idle"),  # a shell, an editor
        (CpuState(cpus=2, physical_cores=2, others_busy=0.5), 2, 1, 1, "2 cores, 1 busy"),  # half a core already stalls a barrier
        (CpuState(cpus=2, physical_cores=2, others_busy=1.02), 2, 1, 1, "2 cores, 1 busy"),  # one hog
        (CpuState(cpus=2, physical_cores=2, others_busy=3.7), 2, 2, 1, "2 cores, 2 busy"),  # a full machine still gets 1
        (CpuState(cpus=8, physical_cores=4, others_busy=1.0), 4, 1, 3, "4 cores, 1 busy"),  # hyper-threads are not cores
        (CpuState(cpus=16, physical_cores=16, quota=4.0, others_busy=0.0), 4, 0, 4, "4 cores, idle"),  # a container's quota
        (CpuState(cpus=16, physical_cores=16, quota=1.5), 1, 0, 1, "1 core"),  # 1.5 cores: one thread, never two that stall
        (CpuState(cpus=3, physical_cores=4, others_busy=None), 3, 0, 3, "3 cores"),  # affinity below the cores; load unknown
    ],
)
def test_free_cores_from_affinity_quota_physical_cores_and_load(state, cores, busy, free, words):
    assert (state.cores, state.busy, state.free, state.describe()) == (cores, busy, free, words)


def test_train_threads_wins_then_omp_num_threads_then_the_free_cores():
    busy = CpuState(cpus=2, physical_cores=2, others_busy=1.0)
    never = lambda: pytest.fail("the machine is not read when the threads are given")  # noqa: E731
    assert choose_threads(2, environ={"OMP_NUM_THREADS": "1"}, state=never) == runtime.ThreadChoice(2, "train.threads")
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "2"}, state=never) == runtime.ThreadChoice(2, "OMP_NUM_THREADS")
    choice = choose_threads(None, environ={}, state=busy)
    assert (choice.threads, choice.reason, choice.state) == (1, "free cores", busy)
    # An empty or malformed OMP_NUM_THREADS is no instruction.
    assert choose_threads(None, environ={"OMP_NUM_THREADS": ""}, state=lambda: busy).threads == 1
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "2,1"}, state=lambda: busy).threads == 1


def test_pinned_threads_count_as_configured_until_unpinned():
    idle = CpuState(cpus=2, physical_cores=2, others_busy=0.0)
    pin_threads(1)
    try:
        assert choose_threads(environ={}, state=idle) == runtime.ThreadChoice(1, "train.threads")
    finally:
        pin_threads(None)
    assert choose_threads(environ={}, state=idle).threads == 2


def test_other_processes_busy_time_excludes_this_process():
    # Two 100 Hz cores over 0.2 s: 20 ticks each. Core 0 fully busy, core 1 half; this process used 0.1 s of CPU.
    samples = iter([{0: (1000, 5000), 1: (300, 5000)}, {0: (1020, 5020), 1: (310, 5020)}])
    own = iter([4.0, 4.1])
    clock = iter([10.0, 10.2])
    busy = others_busy_cores(
        {0, 1}, seconds=0.2, read_times=lambda cpus: next(samples), own_cpu_seconds=lambda: next(own),
        sleep=lambda seconds: None, clock=lambda: next(clock),
    )
    assert busy == pytest.approx(1.5 - 0.5)


def test_proc_stat_ticks_of_the_allowed_cpus_only(tmp_path):
    (tmp_path / "stat").write_text(
        "cpu  10 0 10 100 5 0 0 7 0 0\n"
        "cpu0 1 2 3 40 4 5 6 99 0 0\n"
        "cpu1 10 0 10 60 1 0 0 0 0 0\n"
        "cpu2 5 5 5 5 0 0 0 0 0 0\n"
        "intr 12345\n"
    )
    # busy = user + nice + system + irq + softirq; total adds idle + iowait; steal (99) counts in neither.
    assert cpu_times({0, 1}, tmp_path) == {0: (17, 61), 1: (20, 81)}
    assert cpu_times({0}, tmp_path / "absent") is None


def test_physical_cores_from_the_topology_files(tmp_path):
    for cpu, core in enumerate([0, 0, 1, 1]):  # two cores with two hyper-threads each
        topology = tmp_path / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    assert physical_cores({0, 1, 2, 3}, tmp_path) == 2
    assert physical_cores({0, 2}, tmp_path) == 2
    assert physical_cores({0, 1}, tmp_path) == 1
    assert physical_cores({0, 7}, tmp_path) == 2  # no topology for cpu7: every CPU counts


def test_cgroup_quota_v2_takes_the_tightest_level_and_v1_its_cpu_controller(tmp_path):
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (cgroups / "a" / "b").mkdir(parents=True)
    (cgroups / "cgroup.controllers").write_text("cpu memory\n")
    (cgroups / "a" / "cpu.max").write_text("150000 100000\n")
    (cgroups / "a" / "b" / "cpu.max").write_text("max 100000\n")
    (proc / "self" / "cgroup").write_text("0::/a/b\n")
    assert cgroup_cpu_quota(proc, cgroups) == pytest.approx(1.5)
    (cgroups / "a" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(proc, cgroups) is None

    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "job").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu,cpuacct" / "job" / "cpu.cfs_period_us").write_text("100000\n")
    (proc / "self" / "cgroup").write_text("4:memory:/job\n3:cpu,cpuacct:/job\n0::/\n")
    assert cgroup_cpu_quota(proc, v1) == pytest.approx(0.5)
    (v1 / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(proc, v1) is None
    assert cgroup_cpu_quota(tmp_path / "nothing", v1) is None


class _Machine:
    """A machine whose other processes' load the test sets; counts how often it was read."""

    def __init__(self, others_busy: float) -> None:
        self.others_busy = others_busy
        self.reads = 0

    def __call__(self) -> CpuState:
        self.reads += 1
        return CpuState(cpus=2, physical_cores=2, others_busy=self.others_busy)


@pytest.fixture
def _torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_follower_resizes_at_forced_checks_and_at_most_every_interval(_torch_threads):
    machine, now = _Machine(1.0), [0.0]
    follower = ThreadFollower(interval=60.0, clock=lambda: now[0], environ={}, state=machine)
    assert follower.check(force=True).threads == 1 and torch.get_num_threads() == 1
    machine.others_busy = 0.0  # the neighbour is gone
    now[0] = 30.0
    assert follower.check() is None and torch.get_num_threads() == 1 and machine.reads == 1
    assert follower.check(force=True).threads == 2 and torch.get_num_threads() == 2  # a validation point
    machine.others_busy = 1.0
    now[0] = 95.0
    assert follower.check().threads == 1 and torch.get_num_threads() == 1  # a minute later, unforced
    assert ThreadFollower(device="cuda", state=machine).check(force=True) is None  # the GPU does the work


def test_evaluation_batches_follow_the_free_cores(_torch_threads, monkeypatch):
    machine = _Machine(1.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_state", lambda **kwargs: machine())
    torch.set_num_threads(2)
    seen = [torch.get_num_threads() for _ in following_free_cores(range(3))]
    assert seen == [1, 1, 1] and machine.reads == 1  # sized before the first batch; the interval has not passed
