"""Run deploy/Dockerfile's instructions in a plain venv, since no Docker engine runs here.

    python deploy/verify_dockerfile.py [--keep]

ENV, WORKDIR, COPY, RUN and CMD are carried out in order with absolute paths placed under a temporary
root and `pip`/`python` resolving to a fresh venv (the image's interpreter). Two substitutions, both
printed: torch's `--index-url` is dropped (this machine reaches PyPI only; its local torch==2.13.0 is the
same CPU build), and the CMD's port becomes a free one. The CMD must then serve the code location:
`dagster api grpc-health-check` passes and the server lists the `embed_recordings` job.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def say(message: str) -> None:
    print(f"[verify_dockerfile] {message}", flush=True)


def instructions(text: str) -> list[tuple[str, str]]:
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            op, _, rest = buf.partition(" ")
            out.append((op.upper(), rest.strip()))
            buf = ""
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", action="store_true", help="keep the temporary root for inspection")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dockerfile-"))
    image = root / "image"
    venv_dir = root / "venv"
    say(f"fresh venv in {venv_dir}")
    venv.create(venv_dir, with_pip=True)
    # The machine's environment (pip's index and wheel settings included) minus the project's own settings
    # and the caller's venv: the image starts without them.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EMBED_", "DAGSTER_", "OPENAI_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = f"{venv_dir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    cwd = image

    def place(path: str) -> Path:
        return image / path.lstrip("/") if path.startswith("/") else cwd / path

    server = None
    try:
        for op, rest in instructions(DOCKERFILE.read_text()):
            if op == "FROM":
                say(f"FROM {rest}: stands for the venv's Python {sys.version.split()[0]}")
            elif op == "ENV":
                for token in shlex.split(rest):
                    key, _, value = token.partition("=")
                    env[key] = str(place(value)) if value.startswith("/") else value
                say(f"ENV {rest}")
            elif op == "WORKDIR":
                cwd = place(rest)
                cwd.mkdir(parents=True, exist_ok=True)
                say(f"WORKDIR {rest} -> {cwd}")
            elif op == "COPY":
                *sources, dest = shlex.split(rest)
                target = place(dest)
                for src in sources:  # Docker's rules: a directory's contents go to dest; a file into dest/
                    s = REPO / src
                    if s.is_dir():
                        shutil.copytree(s, target, dirs_exist_ok=True)
                    else:
                        into = target if dest.endswith("/") else target.parent
                        into.mkdir(parents=True, exist_ok=True)
                        shutil.copy(s, into / s.name if dest.endswith("/") else target)
                say(f"COPY {rest}")
            elif op == "RUN":
                command = rest
                if "download.pytorch.org" in command:
                    command = re.sub(r"\s--index-url\s+\S+", "", command)
                    say("substitution: torch --index-url dropped (PyPI only here; local torch==2.13.0 is CPU)")
                say(f"RUN {command}")
                started = time.monotonic()
                subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env, check=True)
                say(f"  ok in {time.monotonic() - started:.0f}s")
            elif op == "EXPOSE":
                say(f"EXPOSE {rest}")
            elif op == "CMD":
                argv = json.loads(rest)
                port = free_port()
                argv = [str(port) if a == "4000" else a for a in argv]
                argv[argv.index("0.0.0.0")] = "127.0.0.1"
                say(f"CMD {shlex.join(argv)}  (substitution: port {port}, loopback host)")
                server = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True)
                check_server(env, cwd, port, server)
            else:
                raise SystemExit(f"unsupported Dockerfile instruction {op}: teach verify_dockerfile.py about it")
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    say("all Dockerfile instructions ran; the code server answered")
    return 0


def check_server(env: dict[str, str], cwd: Path, port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the CMD exited with {server.returncode}")
        ok = subprocess.run(
            ["dagster", "api", "grpc-health-check", "-p", str(port)], cwd=cwd, env=env, capture_output=True
        )
        if ok.returncode == 0:
            break
        time.sleep(2)
    else:
        raise SystemExit("the code server did not pass grpc-health-check within 180 s")
    say("grpc-health-check: SERVING")
    probe = (
        "from dagster._grpc.client import DagsterGrpcClient;"
        f"c = DagsterGrpcClient(port={port}, host='127.0.0.1');"
        "print(c.list_repositories())"
    )
    listed = subprocess.run(
        ["python", "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout
    if "embed_assets.definitions" not in listed:
        raise SystemExit(f"the code server does not serve embed_assets.definitions: {listed[:500]}")
    say("the code server serves embed_assets.definitions")


if __name__ == "__main__":
    sys.exit(main())
