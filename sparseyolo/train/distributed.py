"""Data-parallel training under ``torchrun``: process group, device choice, mask synchronisation.

``torchrun --nproc_per_node K -m sparseyolo finetune ...`` starts K processes with ``RANK``, ``LOCAL_RANK``
and ``WORLD_SIZE`` in their environment; :func:`init_distributed` reads them, binds each process to
``cuda:LOCAL_RANK`` (NCCL) or to the CPU (gloo) and joins the process group. Without those variables
everything here is a no-op and training runs in a single process.

Rules the engine follows: rank 0 alone logs progress, validates and writes checkpoints, with a barrier after
each checkpoint so no rank races ahead into a file being written; masks are made identical on all ranks by
broadcasting rank 0's (:func:`broadcast_masks`) whenever they are set, and DistributedDataParallel broadcasts
rank 0's parameters and buffers when it wraps the model, so all ranks start from the same weights.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "init_distributed", "barrier", "broadcast_masks", "wrap_ddp", "cleanup"]

LOGGER = logging.getLogger(__name__)

#: How long a rank waits for the others (a slow rank-0 validation or checkpoint must fit in it).
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands.

    Attributes:
        rank: global rank (-1 when not distributed). local_rank: rank on this machine (-1 likewise).
        world_size: number of processes (1 when not distributed).
        device: the device this process trains on.
        backend: ``'nccl'``, ``'gloo'`` or ``''``.
    """

    rank: int = -1
    local_rank: int = -1
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, and in a single-process run."""
        return self.rank in (-1, 0)


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``).

    Args:
        device: the device the user asked for (``select_device``); under torchrun a CUDA request becomes
            ``cuda:LOCAL_RANK`` and a CPU request stays on the CPU.

    Raises:
        ValueError: more processes on this machine than CUDA devices.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                "use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    ctx = DistContext(rank=rank, local_rank=local_rank, world_size=world, device=device, backend=backend)
    LOGGER.debug("rank %d/%d on %s (%s)", rank, world, device, backend)
    return ctx


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


@torch.no_grad()
def broadcast_masks(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's ``weight_mask`` buffers (and the weights they mask) to every rank.

    Every rank must hold masks on the same modules (they do: pruning runs on all ranks and is deterministic;
    this removes any doubt about ties broken differently). Masks travel as uint8, which every backend reduces
    and broadcasts.
    """
    if not ctx.enabled:
        return
    names = sorted(n for n, b in model.named_buffers() if n.endswith("weight_mask"))
    # All ranks must agree on which modules are masked before broadcasting tensor by tensor.
    counts = [None] * ctx.world_size
    dist.all_gather_object(counts, names)
    if any(c != names for c in counts):
        raise RuntimeError("ranks hold masks on different layers; pruning must run identically on every rank")
    for name in names:
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        m8 = module.weight_mask.to(torch.uint8)
        dist.broadcast(m8, src=0)
        module.weight_mask.copy_(m8.bool())
        module.weight.mul_(module.weight_mask.to(module.weight.dtype))


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Wrap in DistributedDataParallel (rank 0's state is broadcast at construction); no-op when not distributed."""
    if not ctx.enabled:
        return model
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
