"""A real two-node Ray cluster on this machine: `ray start --head` and `ray start --address`, each
with its own temp dir, stopped at the end by killing exactly the
processes whose command line names those temp dirs (never `ray stop`, which would end every Ray
on the machine)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


class TwoNodeCluster:
    def __init__(self, cpus_per_node: int = 1) -> None:
        self.dirs = [Path(tempfile.mkdtemp(prefix=p, dir="/tmp")) for p in ("krh", "krw")]  # short: socket paths <= 107 chars
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token auth off for this loopback-only test cluster, as for every test session (tests.support.ray_session).
        # Real clusters: RAY_AUTH_MODE=token and one RAY_AUTH_TOKEN on every node (README).
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.cpus = cpus_per_node

    def start(self) -> TwoNodeCluster:
        common = [f"--num-cpus={self.cpus}", "--disable-usage-stats"]
        self._run(["start", "--head", f"--port={self.port}", f"--temp-dir={self.dirs[0]}", "--include-dashboard=false", *common])
        self._run(["start", f"--address={self.address}", f"--temp-dir={self.dirs[1]}", *common])
        return self

    def _run(self, args: list[str]) -> None:
        r = subprocess.run([_ray_cli(), *args], env=self.env, capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray {' '.join(args)} failed: {r.stderr[-2000:]}")

    def pids(self) -> list[int]:
        marks = [str(d) for d in self.dirs]
        out = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmd for m in marks):
                out.append(int(p.name))
        return out

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + wait
            while self.pids() and time.time() < deadline:
                time.sleep(0.2)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
