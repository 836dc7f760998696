"""The command-line options every on-demand study shares (`scaling_extended`, `in_domain`): which profile,
backbone, seed, device, folders and thread count, and the Suite they open."""

from __future__ import annotations

import argparse

import torch

from .suite import Suite


def study_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the shared options; a study adds its own before `open_suite`."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--backbone", default="vit")
    ap.add_argument("--test-images", type=int, default=0, help="test images per task (default: the profile's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--weights-dir", default="")
    ap.add_argument("--results-dir", default="results")
    return ap


def open_suite(ap: argparse.ArgumentParser, a: argparse.Namespace) -> Suite:
    """The Suite the parsed options name, with the thread count set; an unknown backbone is a usage error."""
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        suite = Suite(a.profile, a.seed, a.device, a.data_dir, a.weights_dir, a.results_dir)
    except (KeyError, ValueError, RuntimeError) as e:  # an unknown profile, an absent device: usage errors
        ap.error(str(e.args[0]) if e.args else str(e))
    if a.backbone not in suite.backbone_names:
        ap.error(f"unknown backbone {a.backbone!r}; the {a.profile} profile has: {', '.join(suite.backbone_names)}")
    return suite
