"""Where this process stands in a (possibly one-process) torchrun evaluation, and the collectives it uses.

``torchrun --nproc_per_node N -m zsad_core eval ...`` sets ``WORLD_SIZE > 1``: :func:`init_distributed`
initialises the process group (NCCL with each rank on ``cuda:LOCAL_RANK`` when CUDA is used, gloo on
CPU) and object collectives travel over gloo whatever the main backend. With ``WORLD_SIZE`` unset or 1
nothing is initialised and the collectives are identities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from .eval_config import EvaluationError

__all__ = ["Distributed", "init_distributed"]


@dataclass
class Distributed:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    device: str | None = None
    object_group: Any = None  # process group for object collectives (gloo), None = default group
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, group=self.object_group)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value``, in rank order, on rank 0; None elsewhere."""
        if not self.active:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(value, out, dst=0, group=self.object_group)
        return out

    def close(self) -> None:
        """Destroy the process group when this helper created it."""
        if self.active and self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str | None) -> Distributed:
    """Read torchrun's environment; initialise torch.distributed when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return Distributed(device=device)
    if not torch.distributed.is_available():
        raise EvaluationError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    wants_cuda = device is None or device == "auto" or str(device).startswith("cuda")
    if wants_cuda and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise EvaluationError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        if device is not None and str(device).startswith("cuda"):
            raise EvaluationError(f"device {device!r} was asked for but CUDA is not available")
        device, backend = "cpu", "gloo"
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group(backend=backend, timeout=timedelta(hours=1))
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    # Object collectives (per-category records, plans) travel over gloo on the CPU whatever the
    # main backend: no GPU copies of pickled data.
    object_group = None
    if torch.distributed.get_backend() != "gloo":
        object_group = torch.distributed.new_group(backend="gloo")
    return Distributed(rank, world_size, device, object_group, owns)
