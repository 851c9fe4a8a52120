"""Members trained in processes: one per device, or a DistributedDataParallel group over several.

``--devices D1,…,Dn --per-member N`` makes n/N slots. A slot of one device in a worker that has
only that one trains in the worker's own process (the laptop case, nothing to start). Every other
slot is a group of N processes, one per device, started once per worker (spawned, as CUDA needs)
and kept for its life: each holds the task's data, and trains the members sent to it; a group of
several ranks joins a ``torch.distributed`` process group (NCCL on GPUs, gloo on CPUs) and trains
each member as DDP. Members and their results travel through torch's multiprocessing queues
(tensors in shared memory); the worker keeps the cache, the claims and the storage.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from enstune.config import Task
from enstune.errors import EnstuneError
from enstune.executor import Slot, parse_devices
from enstune.methods import MemberJob
from enstune.training import check_stop

POLL = 1.0  # seconds between checks that the other side of a queue is still alive


def device_groups(devices: list[torch.device], per_member: int) -> list[list[torch.device]]:
    """``devices`` cut into groups of ``per_member``: the devices each member trains on."""
    if per_member < 1:
        raise EnstuneError(f"--per-member must be at least 1, got {per_member}")
    if len(devices) % per_member:
        raise EnstuneError(f"--per-member {per_member} does not divide the {len(devices)} devices of --devices")
    groups = [devices[i:i + per_member] for i in range(0, len(devices), per_member)]
    for group in groups:
        if len({d.type for d in group}) > 1:
            raise EnstuneError(f"a member cannot span {', '.join(map(str, group))}: one kind of device per member")
        if group[0].type == "cuda" and len(set(group)) < len(group):
            raise EnstuneError(f"a member's devices must differ on a GPU, got {', '.join(map(str, group))}")
    return groups


def slots(spec: str, per_member: int, task: Task, home: Path, artifacts: str | None) -> list[Slot]:
    """The slots of ``--devices spec --per-member per_member``: the worker's own process, or groups of processes."""
    groups = device_groups(parse_devices(spec), per_member)
    if len(groups) == 1 and len(groups[0]) == 1:
        if groups[0][0].type == "cuda":  # what "cuda" means to libraries in this process (CLIP's zero-shot head)
            torch.cuda.set_device(groups[0][0])
        return [Slot(groups[0][0])]
    threads = max(1, (os.cpu_count() or 1) // sum(len(g) for g in groups))
    out = []
    for group in groups:
        g = Group(group, (task, home, artifacts), threads)
        out.append(Slot(group[0], g.train, g.close))
    return out


class Group:
    """Processes training one member at a time on ``devices``: one rank per device, DDP when several."""

    def __init__(self, devices: list[torch.device], workspace: tuple[Task, Path, str | None], threads: int) -> None:
        self.devices, self.workspace, self.threads = devices, workspace, threads
        self._procs: list[Any] = []
        self._inboxes: list[Any] = []
        self._outbox: Any = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in self.devices]
        address = f"tcp://127.0.0.1:{_free_port()}"
        # Not daemons: a rank's DataLoader starts worker processes of its own. A rank whose worker
        # is gone (killed) notices it and leaves.
        self._procs = [ctx.Process(target=_serve, args=(rank, self.devices, address, self.workspace, self.threads,
                                                          inbox, self._outbox, os.getpid()),
                                   name=f"enstune-{self.devices[rank]}-{rank}")
                       for rank, inbox in enumerate(self._inboxes)]
        for proc in self._procs:
            proc.start()

    def train(self, key: str, job: MemberJob, parent: Any, device: torch.device,
              on_epoch: Callable[[int, int, float], None] | None = None, refs: dict[int, Any] | None = None) -> Any:
        """Train member ``job`` on the group's devices (``device`` is its first); the result of rank 0.

        Its ``seconds`` are the member's wall time here, the processes' start included (the first member's).
        """
        with self._lock:
            start = time.perf_counter()
            if not self._procs:
                self._start()
            for inbox in self._inboxes:
                inbox.put((key, job, parent, refs or {}))
            result, pending = None, set(range(len(self.devices)))
            while pending:
                try:
                    kind, rank, payload = self._outbox.get(timeout=POLL)
                except queue.Empty:
                    try:
                        check_stop()
                    except BaseException:
                        self.close()  # the ranks train on otherwise: start afresh for the next member
                        raise
                    dead = [p for p in self._procs if not p.is_alive()]
                    if dead:
                        self.close()
                        raise EnstuneError(f"the process training member {job.index} on {dead[0].name.split('-')[1]} "
                                           f"ended (exit code {dead[0].exitcode})") from None
                    continue
                if kind == "epoch":
                    if on_epoch is not None:
                        on_epoch(*payload)
                    continue
                pending.discard(rank)
                if kind == "error":
                    self.close()  # the other ranks may wait in a collective for it: start afresh
                    raise payload
                if rank == 0:
                    result = payload
            if result is not None:
                result.seconds = time.perf_counter() - start
            return result

    def close(self) -> None:
        """Stop the group's processes (they are started again on the next member)."""
        for inbox in self._inboxes:
            try:
                inbox.put(None)
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():  # a rank stuck in a collective with a failed peer; it ignores SIGTERM
                proc.kill()
                proc.join(timeout=5)
        self._procs, self._inboxes = [], []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _portable(exc: BaseException) -> BaseException:
    """``exc``, or an EnstuneError saying what it was where it cannot cross a process boundary."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - whatever fails to pickle is reported by its text
        return EnstuneError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _serve(rank: int, devices: list[torch.device], address: str, workspace: tuple[Task, Path, str | None],
           threads: int, inbox: Any, outbox: Any, worker: int) -> None:
    """A rank's life: join the group, build the workspace, train what arrives until told to stop."""
    import torch.distributed as dist

    from enstune.members import Workspace
    from enstune.storage import open_artifacts

    # Ctrl-C and the batch scheduler's SIGTERM are the worker's to handle: it re-queues the trial and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    device, world = devices[rank], len(devices)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=address, rank=rank,
                                world_size=world, device_id=device if device.type == "cuda" else None)
    # Leave at once when told to, even with results the worker no longer reads (it stopped the group on an error).
    outbox.cancel_join_thread()
    task, home, artifacts = workspace
    ws = Workspace(task, home, open_artifacts(artifacts))
    try:
        while True:
            try:
                message = inbox.get(timeout=POLL)
            except queue.Empty:
                if os.getppid() != worker:
                    return
                continue
            if message is None:
                return
            key, job, parent, refs = message

            def on_epoch(epoch: int, epochs: int, loss: float) -> None:
                outbox.put(("epoch", rank, (epoch, epochs, loss)))

            try:
                result = ws.train(key, job, parent, device, on_epoch if rank == 0 else None, refs)
                outbox.put(("done", rank, result))
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the worker
                outbox.put(("error", rank, _portable(exc)))
            if device.type == "cuda":  # the worker evaluates on this GPU between members: hand back what we cached
                torch.cuda.empty_cache()
    finally:
        if world > 1:
            dist.destroy_process_group()
