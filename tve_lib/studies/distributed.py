"""Multi-process TVE pre-training under torchrun (DistributedDataParallel).

    torchrun --nproc_per_node=8 -m tve_lib.studies.distributed --profile paper --backbone vit deit swin \
        --data-dir /data --weights-dir /weights
    torchrun --nproc_per_node=2 -m tve_lib.distributed --profile paper --dry-run   # gloo on CPU, generated data

Each rank takes its slice of every global batch (`tve.pretrain`), so N processes follow the
trajectory of one process with the same global batch; rank 0 writes the checkpoints that the
notebooks then load from ``results/<profile>/checkpoints``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..explainers import tve
from ..seeds import seeded
from ..synthetic import write_dry_data
from .suite import Suite


def init_distributed() -> tuple[int, int, torch.device]:
    """Initialise the process group from torchrun's environment: (rank, world size, device)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--backbone", nargs="+", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--weights-dir", default="")
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--dry-run", action="store_true",
                    help="the paper profile's dry run: true model sizes, random weights, generated data")
    a = ap.parse_args(argv)
    rank, world, device = init_distributed()
    if a.dry_run:
        if a.profile not in ("paper", "paper-dry-tiny"):
            ap.error("--dry-run is a dry run of the paper profile: use --profile paper --dry-run")
        a.profile = "paper-dry" if a.profile == "paper" else a.profile
        a.data_dir = a.data_dir or str(Path(a.results_dir) / a.profile / "data")
        if rank == 0:
            write_dry_data(a.data_dir, a.seed)
        if world > 1:
            dist.barrier()
    suite = Suite(a.profile, a.seed, str(device), a.data_dir, a.weights_dir, a.results_dir)
    for name in a.backbone or suite.backbone_names:
        if rank == 0:
            suite.backbone(name)  # trains and caches it once (cpu/smoke) before the others load it
        if world > 1:
            dist.barrier()
        bb = suite.backbone(name)
        ckpt = suite.tve_checkpoint(name)
        if ckpt.exists():
            print(f"[rank {rank}] {ckpt} exists; nothing to do")
            continue
        with seeded(a.seed):
            model = tve.build_explainer(bb, suite.profile.tve)
        tve.pretrain(model, bb, suite.pretrain_set(None, name), suite.upstream_for(name)[1], suite.profile.tve,
                     ckpt, a.seed, suite.tve_radius(name), store_dir=suite.ckpt_dir)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
