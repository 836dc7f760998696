"""The house rule, checked: methods -> core only; report -> tables only; one home per row vocabulary.

An import contract over the package's ``ast`` (as import-linter's ``layers`` contract): modules
under ``tve_lib/explainers`` never import ``tve_lib.studies`` or ``tve_lib.report``; modules
under ``tve_lib/report`` import no model code (torch, timm, captum, the explainers, the studies,
backbones, heads, data, metrics, ...); the core imports neither layer above it.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tve_lib"
CORE = ("config", "settings", "io", "schema", "cache", "seeds", "data", "imagesets", "augment", "masking", "operators",
        "loader", "backbones", "token_grids", "backbone_training", "heads", "metrics", "shapley", "timing", "gallery",
        "precision", "preprocess", "memory", "imagefolder", "synthetic")
# entry points, outside the layers: they may start anything (the runner, JupyterLab, torchrun's worker, the package)
ENTRY_POINTS = ("__init__", "runner", "lab", "nbbuild", "distributed")
MODEL_CODE = ("torch", "timm", "captum", "torchvision", "tve_lib.explainers", "tve_lib.studies", "tve_lib.backbones",
              "tve_lib.token_grids",
              "tve_lib.backbone_training",
              "tve_lib.heads", "tve_lib.data", "tve_lib.imagesets", "tve_lib.metrics", "tve_lib.shapley",
              "tve_lib.masking", "tve_lib.operators", "tve_lib.loader", "tve_lib.augment", "tve_lib.timing",
              "tve_lib.cache")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (lazy imports inside functions included)."""
    name = module_name(path)
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from . import ltx` imports a module
    return out


def modules(sub: str = "") -> list[Path]:
    return sorted((PKG / sub).rglob("*.py") if sub else PKG.glob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for p in paths:
        hit = sorted(m for m in imports(p) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if hit:
            bad[module_name(p)] = hit
    return bad


def test_methods_never_import_studies_or_report():
    assert offending(modules("explainers"), ("tve_lib.studies", "tve_lib.report")) == {}


def test_report_imports_no_model_code():
    assert offending(modules("report"), MODEL_CODE) == {}


def test_core_imports_no_layer_above_it():
    core = [PKG / f"{m}.py" for m in CORE]
    assert offending(core, ("tve_lib.explainers", "tve_lib.studies", "tve_lib.report")) == {}
    # every top-level module is core or an entry point, so a new one cannot escape the rule by being unlisted
    assert sorted(p.stem for p in PKG.glob("*.py")) == sorted(CORE + ENTRY_POINTS)


def test_only_studies_take_a_suite():
    """No function outside ``studies/`` has a parameter named ``suite`` (methods and report never do)."""
    bad = []
    for p in [*modules(), *modules("explainers"), *modules("report")]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if any(a.arg == "suite" for a in [*node.args.args, *node.args.kwonlyargs]):
                    bad.append(f"{module_name(p)}.{node.name}")
    assert bad == []


@pytest.mark.parametrize("pattern", [r"^\s*(CURVE|SUMMARY|THROUGHPUT|SCALING|SWEEP|CLAIM)_[A-Z_]*(COLUMNS|KEYS)\s*=",
                                     r"^def method_label\(", r"\.replace\(['\"]/['\"], ['\"]_['\"]\)"])
def test_row_vocabulary_has_one_home(pattern):
    """Columns, keys, labels and file-safe names are defined in `schema` / `cache` only."""
    homes = [module_name(p) for p in modules("") + modules("explainers") + modules("studies") + modules("report")
             if re.search(pattern, p.read_text(), re.M)]
    assert set(homes) <= {"tve_lib.schema", "tve_lib.cache"}, homes


def test_no_path_outside_the_repository():
    """Docstrings and docs point inside the repository: a user's clone has none of the team's notes."""
    root = PKG.parent
    texts = [*PKG.rglob("*.py"), root / "README.md", *(root / "docs").glob("*.md"),
             *(root / "notebooks" / "src").glob("*.py")]
    outside = re.compile("|".join([r"METHOD" + r"\.md", r"\.\./" + "shared"]))  # split: this file stays clean
    bad = [str(p.relative_to(root)) for p in texts if outside.search(p.read_text())]
    assert bad == []


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_code_references_resolve():
    """Every `tve_lib/...py` path and dotted `tve_lib.<module>.<name>` that the README, docs, notebooks and docstrings
    mention exists, so a reader following one lands on the code it describes."""
    root = PKG.parent
    texts = [*PKG.rglob("*.py"), root / "README.md", *(root / "docs").glob("*.md"),
             *(root / "notebooks" / "src").glob("*.py"), *(root / "tests").glob("*.py")]
    bad = set()
    for p in texts:
        text = p.read_text()
        for m in re.finditer(r"tve_lib(?:/[A-Za-z_]+)*/[A-Za-z_]+\.py", text):
            if not (root / m.group(0)).exists():
                bad.add(f"{p.name}: {m.group(0)}")
        for m in re.finditer(r"(?<![/\w])tve_lib(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text):
            if not _resolves(m.group(0).rstrip(".")):
                bad.add(f"{p.name}: {m.group(0)}")
        for m in re.finditer(r"\]\(((?:docs|notebooks|results|tve_lib|tests)/[^)#\s]+)\)", text):
            if not (root / m.group(1)).exists():
                bad.add(f"{p.name}: {m.group(1)}")
    assert sorted(bad) == []


@functools.cache
def _headings(path: Path) -> tuple[list[str], set[str]]:
    """A markdown file's headings (outside code blocks) and their anchors as GitHub makes them (lowercase,
    punctuation dropped, spaces to hyphens, ``-1``, ``-2`` … on repeats)."""
    titles, anchors, seen, fenced = [], set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6} (.*)", line)
        if m:
            titles.append(m.group(1).strip())
            slug = re.sub(r"[^\w\- ]", "", titles[-1].lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(f"{slug}-{n}" if n else slug)
    return titles, anchors


def test_section_references_resolve():
    """Links to a section (``[..](#anchor)``, ``[..](docs/x.md#anchor)``) and sections of docs/benchmarks.md named
    in quotes (``docs/benchmarks.md, "bf16 inference on this CPU"``; the README's bullets of its rows) exist,
    so a reader following one lands on the section it names."""
    root = PKG.parent
    docs = [root / "README.md", *(root / "docs").glob("*.md")]
    bench_titles, _ = _headings(root / "docs" / "benchmarks.md")
    bad = set()
    for p in docs:
        text = p.read_text()
        for m in re.finditer(r"\]\(([\w./-]*\.md)?#([^)\s]+)\)", text):
            target = p.parent / m.group(1) if m.group(1) else p  # relative to the linking file, as GitHub reads it
            if not target.exists() or m.group(2) not in _headings(target)[1]:
                bad.add(f"{p.name}: {m.group(0)}")
    texts = [*PKG.rglob("*.py"), *docs, *(root / "notebooks" / "src").glob("*.py")]
    named = [(p.name, t) for p in texts
             for m in re.finditer(r"benchmarks\.md`?,\s+((?:\"[^\"]+\"(?:,\s*)?)+)", p.read_text())
             for t in re.findall(r"\"([^\"]+)\"", m.group(1))]
    readme = (root / "README.md").read_text()
    named += [("README.md", t) for t in re.findall(r"^- \"([^\"]+)\"", readme, re.M)]
    for name, t in named:  # a title may wrap over lines, and end in "…" where the README shortens it
        prefix = " ".join(t.split()).split("…")[0].strip()
        if not any(h.startswith(prefix) for h in bench_titles):
            bad.add(f"{name}: {t!r}")
    assert sorted(bad) == []


def test_ruff_clean():
    """The code style the developers' guide asks for, notebooks included: ``ruff check`` with pyproject's rules
    finds nothing (a lint error fails the tests, not only a reviewer's eye)."""
    import subprocess
    import sys

    root = PKG.parent
    paths = [str(root / d) for d in ("tve_lib", "tests", "notebooks")]  # not results/: executed copies are not ours
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *paths],
                         cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
