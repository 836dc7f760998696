"""Training and obtaining the profile's backbones: supervised training on the upstream set (cpu and
smoke, resumable per epoch, cached by config digest; the steps under the backbone's training autocast) or
pretrained weights (paper), as frozen `tve_lib.backbones.Backbone` objects."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbones import Backbone, create_model, wrap
from .cache import digest, load_or_train
from .config import BackboneTrain, Profile
from .imagesets import ImageSet, iter_batches
from .io import checkpoint, resume, save_torch
from .precision import dtype_name
from .seeds import seeded


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and shifts of up to 2 px (zero fill = mean colour in normalised space)."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    return torch.roll(F.pad(x, (2, 2, 2, 2)), (dy, dx), (-2, -1))[..., 2:-2, 2:-2]


def _backbone_epoch(bb: Backbone, train: ImageSet, cfg: BackboneTrain, objs: dict, seed: int, epoch: int, n: int,
                    device: torch.device, bar: tqdm) -> dict:
    """One epoch of supervised training, advancing the run's ``bar``; returns its history row."""
    model, opt, sched = objs["model"], objs["opt"], objs["sched"]
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    idx = torch.randperm(len(train), generator=gen)[:n]
    tot, correct, seen = 0.0, 0, 0
    bar.set_description(f"{bb.name} epoch {epoch + 1}/{cfg.epochs}", refresh=False)
    for raw, y, _ in iter_batches(train, cfg.batch_size, idx):
        x = bb.normalize(raw.to(device))
        if cfg.augment:
            x = _augment(x, gen)
        y = y.to(device)
        with bb.training_autocast(model):
            out = model(x).float()
        loss = F.cross_entropy(out, y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tot += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        seen += len(y)
        bar.update()
    return {"epoch": epoch + 1, "loss": tot / seen, "train_acc": correct / seen}


def train_backbone(bb: Backbone, train: ImageSet, profile: Profile, ckpt: Path, seed: int,
                   device: torch.device) -> list[dict]:
    """Supervised training of ``bb`` on the upstream set; resumes from ``ckpt`` per epoch."""
    cfg = profile.backbone_train
    model = bb.model
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type in ("cpu", "cuda"))  # one pass over the weights per step
    n = min(cfg.n_images, len(train))
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=total, pct_start=0.1)
    objs = {"model": model, "opt": opt, "sched": sched}
    part = ckpt.with_suffix(".partial.pt")
    state = resume(part, objs) or {"epoch": 0, "history": []}
    devices = [device] if device.type == "cuda" else []
    # one bar for the whole training, not one per epoch: a notebook keeps every bar it ever showed
    bar = tqdm(total=total, initial=state["epoch"] * steps_per_epoch, leave=False)
    for epoch in range(state["epoch"], cfg.epochs):
        # drop-path (Swin) draws from the global generator: seeded per epoch, so a run resumed from a
        # per-epoch checkpoint trains exactly as an uninterrupted one (fork_rng leaves the caller's state)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed * 1000 + epoch)
            state["history"].append(_backbone_epoch(bb, train, cfg, objs, seed, epoch, n, device, bar))
        state["epoch"] = epoch + 1
        checkpoint(part, objs, **state)
    bar.close()
    model.eval().requires_grad_(False)
    save_torch({"model": model.state_dict(), "history": state["history"]}, ckpt)
    if part.exists():
        part.unlink()
    return state["history"]


@torch.inference_mode()
def evaluate_accuracy(bb: Backbone, ds: ImageSet, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy of the backbone's own classifier on ``ds``."""
    correct = 0
    for raw, y, _ in iter_batches(ds, batch_size):
        correct += (bb.logits(bb.normalize(raw.to(device))).argmax(1).cpu() == y).sum().item()
    return correct / len(ds)


def obtain_backbone(profile: Profile, name: str, ckpt_dir: Path, device: torch.device, seed: int,
                    weights_dir: str | Path | None = None, upstream: ImageSet | None = None,
                    num_classes: int | None = None) -> tuple[Backbone, list[dict]]:
    """The profile's backbone ``name``: pretrained (paper) or trained once on upstream and cached.

    A cached checkpoint is reused when its config digest matches; a corrupted one is reported
    and retrained. Returns the frozen backbone and its training history ([] when pretrained).
    """
    spec = profile.backbone(name)
    n_cls = num_classes if num_classes is not None else (len(upstream.classes) if upstream else 0)
    model = create_model(spec, n_cls, weights_dir)
    bb = wrap(model, spec, profile).to(device)
    if spec.pretrained:
        return bb, []
    key = profile.digest("img_size", "backbone_train", "mean", "std")
    # trained under bf16 autocast: other weights (fp32 keys as they were)
    amp = () if bb.train_dtype is None else (("train_dtype", dtype_name(bb.train_dtype)),)
    ckpt = Path(ckpt_dir) / f"backbone_{name}_{digest(spec, seed, key, *amp)}.pt"

    def restore(s: dict) -> tuple[Backbone, list[dict]]:
        bb.model.load_state_dict(s["model"])
        return bb, s["history"]

    def train() -> tuple[Backbone, list[dict]]:
        if upstream is None:
            raise ValueError(f"backbone {name!r} is not cached at {ckpt}; pass the upstream set to train it")
        with seeded(seed):
            bb.model.load_state_dict(create_model(spec, n_cls).state_dict())  # seeded init
        return bb, train_backbone(bb, upstream, profile, ckpt, seed, device)

    return load_or_train(ckpt, restore, train, f"backbone {name}")
