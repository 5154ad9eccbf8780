"""Several processes through `accelerate`: one code path for 1 or N processes (DDP-style data parallelism).

Under `accelerate launch --num_processes N` (or torchrun) every process runs the same command. A stage
asks `group()` for the process group and then

* draws the same global batch on every process (same seed; `broadcast_object` makes rank 0's draw the
  batch where draws could differ, e.g. a CSPRNG),
* works on its `shard` of that batch,
* sums gradients and statistics across processes (`sum`), so every process takes the same optimizer step
  as a single process would on the whole batch,
* writes files from the main process only.

Started without a launcher (WORLD_SIZE unset or 1), `group()` is `SINGLE`, whose operations are the
identity: no Accelerator is created and nothing changes for ordinary single-process use.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch


class Single:
    """One process: every collective operation is the identity."""

    world = 1
    rank = 0
    is_main = True

    def shard(self, idx):
        return list(idx)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def broadcast_object(self, obj):
        return obj

    def gather_objects(self, items: list) -> list:
        return list(items)

    def barrier(self) -> None:
        pass

    @contextlib.contextmanager
    def main_first(self):
        yield


SINGLE = Single()


class Group(Single):
    """Several processes joined by an `accelerate.Accelerator` (gloo on CPU, NCCL on GPUs)."""

    def __init__(self, accelerator):
        self.acc = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.is_main = accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def shard(self, idx):
        """This process's contiguous part of a global batch (parts differ by at most one example)."""
        return [
            int(i)
            for i in np.array_split(np.asarray(list(idx), dtype=np.int64), self.world)[self.rank]
        ]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(x.to(self.acc.device).contiguous(), reduction="sum").to(x.device)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        from accelerate.utils import broadcast

        return broadcast(x.to(self.acc.device).contiguous(), from_process=0).to(x.device)

    def broadcast_object(self, obj):
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather_objects(self, items: list) -> list:
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self):
        with self.acc.main_process_first():
            yield


def launched_world() -> int:
    """Number of processes the launcher started (1 without a launcher)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def group(device: str | torch.device = "cpu") -> Single:
    """The process group of this run: `SINGLE` without a multi-process launcher, else an accelerate `Group`."""
    if launched_world() <= 1:
        return SINGLE
    from accelerate import Accelerator

    return Group(
        Accelerator(
            cpu=torch.device(device).type == "cpu"
            if str(device) != "auto"
            else not torch.cuda.is_available()
        )
    )


def local_device(device: str) -> str:
    """Under a launcher each process takes its own GPU: 'cuda' -> 'cuda:LOCAL_RANK'; others unchanged."""
    if device == "cuda" and launched_world() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device
