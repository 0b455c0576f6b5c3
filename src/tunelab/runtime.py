"""Facts about the machine a run executes on: free cores and threads, device, whether bf16 is native.

bf16 is "native" where matmuls run faster in it than in fp32: CUDA GPUs of compute capability 8.0+,
and x86 CPUs whose bf16 instructions, timed once per process, beat fp32 clearly (``cpu_bf16_native``:
the flags alone do not tell). Elsewhere bf16 is emulated or slower, so tunelab trains in fp32 there.

Threads follow the cores that are free (``choose_threads``): torch's intra-op threads synchronise at
every operation, so one thread that shares its core with another process stalls all of them. On the
project's 2-core machine a training with torch's default 2 threads ran at 12 real tokens/s while
another process kept one core busy, and at 150 with one thread (bench/README.md, "Threads that follow
the free cores"). torch is imported inside the functions that need it, so reading the machine's state
(``cpu_state``) stays cheap for the estimate's arithmetic.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instructions that run bf16 matmuls natively on an x86 CPU; without them bf16 is emulated.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# bf16 must run the model's matmul this much faster than fp32 before a CPU trains in it: autocast adds a cast of
# every activation and weight it feeds a matmul, which a small matmul gain does not pay for.
BF16_MIN_SPEEDUP = 1.5


def cpu_bf16_native() -> bool:
    """True when this CPU runs bf16 matmuls clearly faster than fp32 (``BF16_MIN_SPEEDUP``), measured.

    Without bf16 instructions (``avx512_bf16``, ``amx_bf16``) bf16 is emulated and never faster. With them
    the flags do not tell: AMX tiles run bf16 several times faster than fp32; with AVX512-BF16 alone the
    project's 2-core Xeon measured torch.mm at 0.14 TFLOP/s in bf16 against 0.32 in fp32 (a LoRA step under
    autocast about 3x slower), while a 2-core AMD EPYC (Zen 5) measured 0.50 against 0.11 on one thread
    (bench/README.md, "bf16 decided by measurement"). So such a CPU times one matmul of the default model's
    MLP shape in both dtypes (``cpu_bf16_speedup``) and trains in bf16 only where it wins.
    """
    speedup = cpu_bf16_speedup()
    return speedup is not None and speedup >= BF16_MIN_SPEEDUP


def cpu_bf16_speedup() -> float | None:
    """``bf16_matmul_speedup`` where the CPU has bf16 instructions; None (nothing timed) where it has none."""
    return bf16_matmul_speedup() if BF16_CPU_FLAGS & cpu_flags() else None


@functools.cache
def bf16_matmul_speedup(rows: int = 256, inner: int = 576, outer: int = 1536) -> float:
    """fp32 seconds / bf16 seconds of one ``[rows x inner] @ [inner x outer]`` torch.mm, on one thread.

    The default model's MLP projection over a micro-batch's tokens; one thread, so a busy neighbour core
    slows both dtypes alike instead of stalling a thread pool. Best of 5 timed runs after a warm-up (oneDNN
    builds its kernel on the first call); about 0.2 s, once per process.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(rows, inner, generator=generator), torch.randn(inner, outer, generator=generator)
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            x, y = a.to(dtype), b.to(dtype)
            out = torch.mm(x, y)
            best = math.inf
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(3):
                    torch.mm(x, y, out=out)
                best = min(best, time.perf_counter() - started)
            seconds[dtype] = best
        return seconds[torch.float32] / max(seconds[torch.bfloat16], 1e-9)
    finally:
        torch.set_num_threads(threads)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch running out of accelerator memory (``torch.OutOfMemoryError``, or a RuntimeError
    that says so: cuBLAS, MPS); training and evaluation turn it into one line naming the settings to lower."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def bf16_native(device: str | None = None) -> bool:
    """Whether bf16 compute is faster than fp32 on ``device`` (default: the best device here)."""
    import torch

    device = device or default_device()
    if device.startswith("cuda"):
        # Not torch.cuda.is_bf16_supported() as it is: it also says yes where bf16 is only emulated (a T4, a V100),
        # slower than fp32 there.
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device == "cpu":
        return cpu_bf16_native()
    return False


def resolve_precision(requested: str, device: str | None = None) -> str:
    """Turn a configured precision (``auto``, ``fp32``, ``bf16``) into the one to use: ``fp32`` or ``bf16``."""
    if requested == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return requested


@dataclass(frozen=True)
class EnvironmentInfo:
    python: str
    platform: str
    cpu: str
    cores: int
    torch_threads: int
    device: str
    bf16_native: bool
    cpu_bf16_flags: list[str]
    cpu_bf16_speedup: float | None  # fp32 / bf16 time of one matmul, where the CPU has bf16 instructions
    cuda_devices: list[str]
    versions: dict[str, str]

    def as_dict(self) -> dict:
        return asdict(self)


def environment_info() -> EnvironmentInfo:
    """Collect versions and hardware facts (what ``tunelab env`` shows)."""
    from importlib import metadata

    import torch

    versions = {}
    for name in ("tunelab", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "trl"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return EnvironmentInfo(
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=cpu_model_name(),
        cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        device=default_device(),
        bf16_native=bf16_native(),
        cpu_bf16_flags=sorted(BF16_CPU_FLAGS & cpu_flags()),
        cpu_bf16_speedup=None if (speedup := cpu_bf16_speedup()) is None else round(speedup, 2),
        cuda_devices=cuda,
        versions=versions,
    )


# ----------------------------------------------------------------------------- free cores and threads

# A core counts as busy when other processes use at least this share of it: two torch threads beside a
# neighbour that takes half a core already wait on it at every operation's barrier.
BUSY_CORE_SHARE = 0.5
# How long a sample of the other processes' CPU time lasts (this process is idle meanwhile): 20 clock
# ticks per core at Linux's 100 Hz, a 5 % resolution, and a pause that is nothing next to a training step.
LOAD_SAMPLE_SECONDS = 0.2
# Between validation points the training loop (and an evaluation between batches) checks again at most
# this often: a neighbour that starts mid-run costs at most this long at the wrong thread count.
THREAD_CHECK_SECONDS = 60.0

# The process's configured thread count (``train.threads`` of the run it executes, see :func:`pin_threads`).
_pinned_threads: int | None = None


@dataclass(frozen=True)
class CpuState:
    """What this process may use of the machine's CPUs, and how much of it other processes take.

    Attributes:
        cpus: logical CPUs this process may run on (its affinity mask).
        physical_cores: distinct physical cores among them (hyper-threads share one core's units).
        quota: the cgroup CPU quota in cores (``cpu.max``), None when there is none.
        others_busy: cores' worth of CPU time other processes used over the sample, None when unknown.
    """

    cpus: int
    physical_cores: int
    quota: float | None = None
    others_busy: float | None = None

    @property
    def cores(self) -> int:
        """Cores this process may use when nothing else runs: affinity, physical cores and quota."""
        limit = min(self.cpus, self.physical_cores)
        if self.quota is not None:
            # A quota of 1.5 cores runs two threads 75 % of each period, then stalls both: count whole cores.
            limit = min(limit, max(1, math.floor(self.quota + 1e-6)))
        return max(1, limit)

    @property
    def busy(self) -> int:
        """Of :attr:`cores`, how many other processes keep busy (rounded at ``BUSY_CORE_SHARE`` of a core)."""
        if not self.others_busy:
            return 0
        return min(self.cores, math.floor(self.others_busy + 1 - BUSY_CORE_SHARE))

    @property
    def free(self) -> int:
        """Cores free for this process's threads (at least one: a job on a full machine still runs)."""
        return max(1, self.cores - self.busy)

    def describe(self) -> str:
        """The state as a person reads it: ``2 cores, 1 busy`` (``2 cores, idle``; ``2 cores`` when unknown)."""
        cores = f"{self.cores} core{'s' if self.cores != 1 else ''}"
        if self.others_busy is None:
            return cores
        return f"{cores}, {self.busy} busy" if self.busy else f"{cores}, idle"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cores": self.cores, "busy": self.busy, "free": self.free}


@dataclass(frozen=True)
class ThreadChoice:
    """How many torch threads to run with, and why (``train.threads``, ``OMP_NUM_THREADS`` or the free cores)."""

    threads: int
    reason: str
    state: CpuState | None = None


def allowed_cpus() -> set[int]:
    """The logical CPUs this process may run on (``os.sched_getaffinity``; all of them where it is missing)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sys_root: Path = Path("/sys")) -> int:
    """Distinct (package, core) pairs among ``cpus`` from the kernel's topology files; ``len(cpus)`` without them."""
    cores = set()
    for cpu in cpus:
        topology = sys_root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(), topology.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def cgroup_cpu_quota(proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The tightest CPU quota (in cores) of this process's cgroup and its parents, None when unlimited.

    cgroup v2: ``cpu.max`` (``QUOTA PERIOD`` or ``max PERIOD``) along the path in ``/proc/self/cgroup``;
    cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of the ``cpu`` controller's folder.
    """
    try:
        lines = (proc_root / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = path.strip().lstrip("/")
        if controllers == "":  # v2: every level from this cgroup up to the root may set a quota
            base = cgroup_root if (cgroup_root / "cgroup.controllers").exists() else cgroup_root / "unified"  # hybrid layout
            folder = base / relative if relative else base
            while True:
                try:
                    quota, period = (folder / "cpu.max").read_text().split()[:2]
                    if quota != "max" and float(period) > 0:
                        quotas.append(float(quota) / float(period))
                except (OSError, ValueError):
                    pass
                if folder == base or base not in folder.parents:
                    break
                folder = folder.parent
        elif "cpu" in controllers.split(","):
            for folder in (cgroup_root / controllers / relative, cgroup_root / "cpu" / relative, cgroup_root / "cpu,cpuacct" / relative):
                try:
                    quota = float((folder / "cpu.cfs_quota_us").read_text())
                    period = float((folder / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if quota > 0 and period > 0:
                    quotas.append(quota / period)
                break
    return min(quotas) if quotas else None


def cpu_times(cpus: set[int], proc_root: Path = Path("/proc")) -> dict[int, tuple[int, int]] | None:
    """(busy, total) clock ticks of each of ``cpus`` since boot from ``/proc/stat``, None where it is unreadable.

    Busy is user + nice + system + irq + softirq; idle and iowait are not; steal (time the hypervisor
    gave to another guest) is in neither, so a core the host shares does not look taken by a process here.
    """
    try:
        lines = (proc_root / "stat").read_text().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            cpu = int(name[3:])
            fields = [int(value) for value in rest.split()]
        except ValueError:
            continue
        if cpu not in cpus or len(fields) < 4:
            continue
        user, nice, system, idle = fields[:4]
        iowait, irq, softirq = (fields[4:7] + [0, 0, 0])[:3]
        busy = user + nice + system + irq + softirq
        times[cpu] = (busy, busy + idle + iowait)
    return times or None


def others_busy_cores(
    cpus: set[int],
    *,
    seconds: float = LOAD_SAMPLE_SECONDS,
    read_times: Callable[[set[int]], dict[int, tuple[int, int]] | None] | None = None,
    own_cpu_seconds: Callable[[], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
) -> float | None:
    """Cores' worth of CPU time that processes other than this one used on ``cpus`` over ``seconds``.

    The machine's busy ticks on those CPUs minus this process's own CPU time over the same wall time
    (its other threads may run meanwhile). Falls back to the 1-minute load average where ``/proc/stat``
    is missing (it then also counts this process, when it has been computing).
    """
    read_times = read_times or cpu_times
    own_cpu_seconds = own_cpu_seconds or (lambda: sum(os.times()[:2]))
    before, own_before, started = read_times(cpus), own_cpu_seconds(), clock()
    if before is None:
        try:
            return max(0.0, os.getloadavg()[0])
        except (AttributeError, OSError):
            return None
    sleep(seconds)
    after, own_after, wall = read_times(cpus), own_cpu_seconds(), clock() - started
    if after is None or wall <= 0:
        return None
    busy = 0.0
    for cpu, (busy_after, total_after) in after.items():
        busy_before, total_before = before.get(cpu, (busy_after, total_after))
        if total_after > total_before:
            busy += (busy_after - busy_before) / (total_after - total_before)
    return max(0.0, busy - (own_after - own_before) / wall)


def cpu_state(*, sample_seconds: float | None = LOAD_SAMPLE_SECONDS) -> CpuState:
    """This machine now: affinity, physical cores, cgroup quota and (unless ``sample_seconds`` is None)
    the other processes' busy cores, sampled over ``sample_seconds``."""
    cpus = allowed_cpus()
    others = others_busy_cores(cpus, seconds=sample_seconds) if sample_seconds is not None else None
    return CpuState(cpus=len(cpus), physical_cores=physical_cores(cpus), quota=cgroup_cpu_quota(), others_busy=others)


def choose_threads(
    configured: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    state: CpuState | Callable[[], CpuState] | None = None,
) -> ThreadChoice:
    """The torch threads a CPU job should run with now.

    In order: ``configured`` (``train.threads``; by default the one :func:`pin_threads` set) wins; then an explicit ``OMP_NUM_THREADS`` (whoever set
    it sized the job); else the cores free now (:class:`CpuState`: affinity, cgroup quota and other
    processes' load; never more than the physical cores). ``state`` injects the machine (a value, or a
    function called only when needed); by default it is read and sampled here.
    """
    environ = os.environ if environ is None else environ
    configured = configured or _pinned_threads
    if configured:
        return ThreadChoice(int(configured), "train.threads")
    explicit = (environ.get("OMP_NUM_THREADS") or "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return ThreadChoice(int(explicit), "OMP_NUM_THREADS")
    if state is None:
        state = cpu_state()
    elif callable(state):
        state = state()
    return ThreadChoice(state.free, "free cores", state)


def pin_threads(threads: int | None) -> None:
    """Set the process's configured thread count (a run's ``train.threads``; None: follow the free cores).

    The run's steps (training, the baselines, the evaluation) all size torch's threads by
    :func:`choose_threads`; the pipeline pins its config's ``train.threads`` once, so a user who set it
    gets it in every step, not only in the training loop.
    """
    global _pinned_threads
    _pinned_threads = threads


def follow_free_cores(configured: int | None = None, **kwargs: Any) -> ThreadChoice:
    """:func:`choose_threads`, applied to torch's intra-op threads (a no-op when they already match)."""
    import torch

    choice = choose_threads(configured, **kwargs)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice


class ThreadFollower:
    """Keeps a long CPU job's torch threads on the free cores: :meth:`check` at its start, at each
    validation point (``force=True``), and otherwise at most every ``interval`` seconds.

    Off the CPU (a CUDA run) it does nothing: the GPU does the work, not torch's CPU threads.
    """

    def __init__(self, configured: int | None = None, *, device: str = "cpu", interval: float = THREAD_CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic, **choose: Any) -> None:  # fmt: skip
        self.configured = configured
        self.enabled = device == "cpu"
        self.interval = interval
        self.clock = clock
        self.choose = choose
        self.last: ThreadChoice | None = None
        self._checked_at: float | None = None

    def check(self, *, force: bool = False) -> ThreadChoice | None:
        """Resize the threads when forced or when ``interval`` has passed since the last check; the choice made (None: no check)."""
        if not self.enabled:
            return None
        now = self.clock()
        if not force and self._checked_at is not None and now - self._checked_at < self.interval:
            return None
        self._checked_at = now
        self.last = follow_free_cores(self.configured, **self.choose)
        return self.last


def following_free_cores(batches: Iterable[Any], device: str = "cpu") -> Iterator[Any]:
    """Yield ``batches``, with torch's threads sized to the free cores before the first and checked
    again between batches at most every ``THREAD_CHECK_SECONDS`` (an evaluation's loop over batches)."""
    follower = ThreadFollower(device=device)
    follower.check(force=True)
    for batch in batches:
        yield batch
        follower.check()


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost): a server bound there is reachable from
    nowhere else (``tunelab serve``, ``tunelab ui``), an endpoint there is no provider's (the remote client)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
