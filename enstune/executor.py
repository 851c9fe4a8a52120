"""Runs a plan's member jobs on a list of devices, yielding results in member order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from enstune.errors import EnstuneError
from enstune.methods import MemberJob

# work(job, parent_result_or_None, device, {ref index: result}) -> result
Work = Callable[[MemberJob, Any, torch.device, dict[int, Any]], Any]


def parse_devices(spec: str) -> list[torch.device]:
    """``cpu`` or ``cuda:0,cuda:1`` into devices, checking that they exist."""
    devices = []
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise EnstuneError(f"unknown device {name!r}; use cpu or cuda:N") from None
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise EnstuneError(f"device {name} is not available on this machine")
        if dev.type not in ("cpu", "cuda"):
            raise EnstuneError(f"unsupported device {name!r}; use cpu or cuda:N")
        devices.append(dev)
    if not devices:
        raise EnstuneError("--devices is empty")
    return devices


class Executor:
    """Schedules member jobs on devices: a job starts once its parent and the members it reads are done."""

    def __init__(self, devices: list[torch.device]) -> None:
        self.devices = devices

    def run(self, jobs: list[MemberJob], work: Work) -> Iterator[tuple[MemberJob, Any]]:
        """Yield (job, result) in member order; with one device, jobs run one by one in that order."""
        if len(self.devices) == 1:
            done: dict[int, Any] = {}
            for job in jobs:
                done[job.index] = work(job, done.get(job.parent), self.devices[0], {r: done[r] for r in job.refs})
                yield job, done[job.index]
            return
        yield from self._parallel(jobs, work)

    def _parallel(self, jobs: list[MemberJob], work: Work) -> Iterator[tuple[MemberJob, Any]]:
        done: dict[int, Any] = {}
        pending = list(jobs)
        free = list(self.devices)
        running: dict[Future, tuple[MemberJob, torch.device]] = {}
        next_index = 0
        with ThreadPoolExecutor(max_workers=len(self.devices)) as pool:
            try:
                while pending or running:
                    ready = [j for j in pending if (j.parent is None or j.parent in done) and set(j.refs) <= set(done)]
                    for job in ready:
                        if not free:
                            break
                        device = free.pop(0)
                        pending.remove(job)
                        refs = {r: done[r] for r in job.refs}
                        running[pool.submit(work, job, done.get(job.parent), device, refs)] = (job, device)
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        job, device = running.pop(fut)
                        done[job.index] = fut.result()
                        free.append(device)
                    while next_index < len(jobs) and jobs[next_index].index in done:
                        yield jobs[next_index], done[jobs[next_index].index]
                        next_index += 1
            finally:
                for fut in running:
                    fut.cancel()
