"""Atomic writes, tidy CSVs and provenance (`run.json`).

Everything the suite writes goes through a temporary file and `os.replace`, so an interrupted
run never leaves a half-written checkpoint or CSV behind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .precision import cpu_bf16


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_torch(obj: Any, path: str | Path) -> None:
    """`torch.save` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated or not a checkpoint)."""


def load_torch(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load` that turns any read failure into `CorruptCheckpoint` naming the file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, pickle errors, ...
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                                "delete it to retrain") from e


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a tidy CSV atomically; returns the path."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def _key_strings(df: pd.DataFrame, keys: list[str]) -> list[tuple[str, ...]]:
    """Row keys as strings, an empty cell ("" , NaN, NA, or a missing column) as ""."""
    k = pd.DataFrame({c: df[c] if c in df else pd.Series(pd.NA, index=df.index, dtype=object) for c in keys})
    k = k.astype(object).where(k.notna(), "")
    return list(map(tuple, k.astype(str).values.tolist()))


def upsert_csv(df: pd.DataFrame, path: str | Path, keys: list[str]) -> pd.DataFrame:
    """Merge ``df`` into the CSV at ``path``: rows sharing ``keys`` values with ``df`` are replaced.

    Lets several notebooks append their methods to one shared CSV (e.g. fidelity/summary.csv)
    and lets a rerun replace its own rows instead of duplicating them. A key column that a frame
    lacks counts as empty, so rows that leave it empty never replace rows that set it.
    """
    path = Path(path)
    if path.exists():
        old = pd.read_csv(path)
        new_keys = set(_key_strings(df, keys))
        keep = [k not in new_keys for k in _key_strings(old, keys)]
        df = pd.concat([old[keep], df], ignore_index=True)
    write_csv(df, path)
    return df


def write_json(obj: Any, path: str | Path) -> None:
    """``obj`` as indented JSON at ``path``, written atomically (what is not JSON is written as its string)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=str))


def git_commit(repo: str | Path | None = None) -> str:
    """Current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    cwd = Path(repo or Path(__file__).resolve().parent.parent)
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=cwd, text=True,
                                      stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"],
                                        cwd=cwd, text=True, stderr=subprocess.DEVNULL).strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


PACKAGES = ("torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn", "captum",
            "papermill", "seaborn", "matplotlib")


def package_versions() -> dict[str, str]:
    """The installed version of each package of ``PACKAGES`` (``"not installed"`` where one is missing)."""
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def device_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Device name and thread count, so every result says where it was measured; for the CPU also its model and
    whether it has bf16 instructions (which decide what precision ``"native"`` runs in)."""
    device = torch.device(device)
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads(),
                            "cpu": platform.processor() or platform.machine(), "cpu_bf16": cpu_bf16()}
    model = _cpu_model()
    if model:
        info["cpu_model"] = model
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def provenance(parameters: dict[str, Any], seed: int, device: str, wall_s: float | None = None,
               **extra: Any) -> dict[str, Any]:
    """The `run.json` record: commit, versions, device, parameters, seed, wall time."""
    return {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "device": device_info(device),
        "parameters": parameters,
        "seed": seed,
        "wall_time_s": wall_s,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def resume(partial: str | Path, objects: dict[str, Any]) -> dict[str, Any] | None:
    """Restore ``objects`` (name -> has ``load_state_dict``) from an epoch checkpoint.

    Returns the checkpoint's remaining entries (epoch, history, ...) or None when there is
    nothing usable; a corrupted partial checkpoint is deleted so training restarts cleanly.
    """
    partial = Path(partial)
    if not partial.exists():
        return None
    try:
        s = load_torch(partial)
        for k, obj in objects.items():
            obj.load_state_dict(s[k])
    except (CorruptCheckpoint, KeyError, RuntimeError, ValueError) as e:
        print(f"warning: cannot resume from {partial} ({e}); starting over")
        partial.unlink()
        return None
    return {k: v for k, v in s.items() if k not in objects}


def checkpoint(partial: str | Path, objects: dict[str, Any], **extra: Any) -> None:
    """Atomically save ``objects``' state dicts and ``extra`` (the counterpart of `resume`)."""
    save_torch({**{k: o.state_dict() for k, o in objects.items()}, **extra}, partial)
