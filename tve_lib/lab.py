"""JupyterLab on the suite's notebooks with the suite's kernel: ``./run_all.sh --lab`` and the browser test.

``python -m tve_lib.lab [--port N] [--token T] [--notebook-dir DIR]`` starts JupyterLab from this
interpreter (the venv's, whose ``python3`` kernel ``run_all.sh`` registers) and prints the URL with
its token. `start_lab` is the same server as a subprocess, for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def free_port() -> int:
    """A free local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: JupyterLab settings for a driven (test) session: every cell in the page, no news pop-up
TEST_SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                 "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}


def write_settings(settings_dir: Path, settings: dict[str, dict]) -> Path:
    """Write JupyterLab user settings (``plugin id -> values``) under ``settings_dir``."""
    for plugin, values in settings.items():
        package, name = plugin.rsplit("/", 1)
        f = Path(settings_dir) / package / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    return Path(settings_dir)


def lab_command(port: int, token: str, notebook_dir: Path, settings_dir: Path | None = None) -> list[str]:
    """The command line of a local JupyterLab server on ``notebook_dir``."""
    root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # CI containers run as root
    own = [f"--LabApp.user_settings_dir={settings_dir}", f"--LabApp.workspaces_dir={settings_dir}"] \
        if settings_dir else []
    return [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", *root,
            f"--ServerApp.root_dir={notebook_dir}", f"--IdentityProvider.token={token}",
            "--ServerApp.open_browser=False", *own]


def lab_url(port: int, token: str, path: str = "lab") -> str:
    """The address of the local JupyterLab server's ``path``, its token included."""
    return f"http://127.0.0.1:{port}/{path}?token={token}"


def start_lab(notebook_dir: Path, port: int | None = None, token: str | None = None, timeout: float = 120.0,
              log: Path | None = None, settings_dir: Path | None = None) -> tuple[subprocess.Popen, str, int, str]:
    """Start JupyterLab on ``notebook_dir`` and wait until it answers: ``(process, url, port, token)``.
    ``settings_dir``: user settings and workspaces of this server only (see `write_settings`)."""
    port, token = port or free_port(), token or secrets.token_hex(16)
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (the server outlives this call)
    proc = subprocess.Popen(lab_command(port, token, Path(notebook_dir), settings_dir), stdout=out,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode} (log: {log})")
        try:
            with urllib.request.urlopen(lab_url(port, token, "api/status"), timeout=2):
                return proc, lab_url(port, token), port, token
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise TimeoutError(f"JupyterLab did not answer on port {port} within {timeout:.0f} s (log: {log})")


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--port", type=int, default=8888)
    a.add_argument("--token", default=None, help="default: a random token, printed in the URL")
    a.add_argument("--notebook-dir", default=str(NOTEBOOKS))
    args = a.parse_args(argv)
    token = args.token or secrets.token_hex(16)
    print(f"JupyterLab on {args.notebook_dir} with the suite's kernel (python3 of {sys.prefix})\n"
          f"open: {lab_url(args.port, token)}", flush=True)
    return subprocess.call(lab_command(args.port, token, Path(args.notebook_dir)))


if __name__ == "__main__":
    sys.exit(main())
