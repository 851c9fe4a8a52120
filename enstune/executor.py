"""Runs a plan's member jobs on slots (a device of this process, or a group of processes), in member order."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import torch

from enstune.errors import Deferred, EnstuneError
from enstune.methods import MemberJob

log = logging.getLogger("enstune.executor")


@dataclass(frozen=True)
class Slot:
    """Where a member trains: ``device`` in this process, or, with ``train`` set, processes that ``train`` drives."""

    device: torch.device  # the slot's first device
    train: Callable[..., Any] | None = None  # Workspace.train's signature; None: Workspace.train itself
    close: Callable[[], None] | None = None  # ends the slot's processes


# work(job, parent_result_or_None, slot, {ref index: result}, wait) -> result; raises Deferred if not wait
Work = Callable[[MemberJob, Any, Slot, dict[int, Any], bool], Any]


def parse_devices(spec: str) -> list[torch.device]:
    """``cpu``, ``cuda:0,cuda:1`` (a device may repeat: ``cpu,cpu``) or ``auto`` (every GPU, else the CPU)."""
    if spec.strip() == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:  # else a cluster job meant for GPUs would train on the CPU without a word
            log.warning("--devices auto: this machine has no GPU; training on the CPU")
        return [torch.device("cuda", i) for i in range(count)] or [torch.device("cpu")]
    names = [s.strip() for s in spec.split(",")]
    if not spec.strip():
        raise EnstuneError("--devices is empty")
    if "" in names:  # a typo, not a device: the worker would train on fewer than meant
        raise EnstuneError(f"--devices {spec!r} has an empty entry; use cpu, cuda:0,cuda:1 or auto")
    devices = []
    for name in names:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise EnstuneError(f"unknown device {name!r}; use cpu or cuda:N") from None
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise EnstuneError(f"device {name} is not available on this machine")
        if dev.type not in ("cpu", "cuda"):
            raise EnstuneError(f"unsupported device {name!r}; use cpu or cuda:N")
        if dev.type == "cuda" and dev.index is None:  # a bare "cuda" is the current GPU, named: ranks need an index
            dev = torch.device("cuda", torch.cuda.current_device())
        devices.append(dev)
    if not devices:
        raise EnstuneError("--devices is empty")
    return devices


class Executor:
    """Schedules member jobs on slots: a job starts once its parent and the members it reads are done."""

    def __init__(self, slots: Sequence[Slot | torch.device]) -> None:
        self.slots = [s if isinstance(s, Slot) else Slot(s) for s in slots]
        self.devices = [s.device for s in self.slots]

    def close(self) -> None:
        """End the slots' processes, if any."""
        for slot in self.slots:
            if slot.close is not None:
                slot.close()

    def run(self, jobs: list[MemberJob], work: Work) -> Iterator[tuple[MemberJob, Any]]:
        """Yield (job, result) in member order; with one slot, jobs run one by one, in this thread.

        A job starts with ``wait=False``: when another worker is training that member (``Deferred``),
        other jobs go first, and the job is tried again, waiting, once nothing else can start or finish.
        """
        done: dict[int, Any] = {}
        pending, deferred = list(jobs), set()
        free, running = list(self.slots), {}
        next_index = 0
        # Threads only wait: a slot with processes trains there; a slot of this process shares its GIL.
        pool = ThreadPoolExecutor(max_workers=len(self.slots)) if len(self.slots) > 1 else None
        try:
            while pending or running:
                ready = [j for j in pending if (j.parent is None or j.parent in done) and set(j.refs) <= set(done)]
                fresh = [j for j in ready if j.index not in deferred]
                finished = []
                for job in fresh or ([] if running else ready[:1]):
                    if not free:
                        break
                    slot = free.pop(0)
                    pending.remove(job)
                    call = (work, job, done.get(job.parent), slot, {r: done[r] for r in job.refs}, job.index in deferred)
                    if pool is None:
                        finished = [(job, slot, _attempt(*call))]
                        break
                    running[pool.submit(_attempt, *call)] = (job, slot)
                if pool is not None:
                    finished = [(*running.pop(f), f.result()) for f in wait(running, return_when=FIRST_COMPLETED)[0]]
                for job, slot, (result, held) in finished:
                    free.append(slot)
                    if held:
                        deferred.add(job.index)
                        pending.append(job)
                        pending.sort(key=lambda j: j.index)
                    else:
                        done[job.index] = result
                while next_index < len(jobs) and jobs[next_index].index in done:
                    yield jobs[next_index], done[jobs[next_index].index]
                    next_index += 1
        finally:
            if pool is not None:
                for fut in running:
                    fut.cancel()
                pool.shutdown(wait=True)


def _attempt(work: Work, job: MemberJob, parent: Any, slot: Slot, refs: dict[int, Any],
             block: bool) -> tuple[Any, bool]:
    """(result, False), or (None, True) when the member is being trained elsewhere and ``block`` is off."""
    try:
        return work(job, parent, slot, refs, block), False
    except Deferred:
        if block:
            raise
        return None, True
