"""Deployment engine: the Flower app folder, and a SuperLink + SuperNodes on loopback.

``write_app(folder, preset, overrides, out)`` writes a Flower app (pyproject.toml only): its components are
``detectlab.violence.server_app:app`` and ``detectlab.violence.client_app:app`` from the installed package,
and its run config carries the detectlab preset, overrides (``k=v;k=v``) and the run folder. Then::

    flower-superlink --insecure --disable-runtime-dependency-installation --port 9093
    flower-supernode --insecure --superlink 127.0.0.1:9093 --port 9094 --node-config "partition-id=0 num-partitions=2"
    flower-supernode --insecure --superlink 127.0.0.1:9093 --port 9095 --node-config "partition-id=1 num-partitions=2"
    flwr run APP deploy --stream          # a [superlink.deploy] connection in $FLWR_HOME/config.toml

:class:`LocalDeployment` does exactly that on 127.0.0.1 with free ports, optionally with TLS (a throw-away
CA + server certificate made with ``openssl``) and SuperNode authentication (EC keys registered with
``flwr supernode register``), and always stops what it started (SIGTERM by process group, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

APP_NAME = "detectlab-violence"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _q(v: str) -> str:
    return json.dumps(str(v))  # a TOML basic string


def write_app(folder: Path, preset: str = "smoke", overrides: list[str] | None = None,
              out: Path | str = "runs/violence-deploy") -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ov = ";".join(overrides or [])
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "detectlab violence: Diff-Gated violence detection with FedAvg/FedPer/Per-FedAvg/FedMeta-Per"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "detectlab"

[tool.flwr.app.components]
serverapp = "detectlab.violence.server_app:app"
clientapp = "detectlab.violence.client_app:app"

[tool.flwr.app.config]
preset = {_q(preset)}
overrides = {_q(ov)}
out = {_q(Path(out).expanduser().resolve())}
""")
    return folder


def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


class LocalDeployment:
    """A SuperLink and `n_nodes` SuperNodes on 127.0.0.1, stopped on exit (use as a context manager)."""

    def __init__(self, workdir: Path, n_nodes: int = 2, tls: bool = False, auth: bool = False,
                 node_config: dict[int, str] | None = None):
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n_nodes, self.tls, self.auth = n_nodes, tls, auth
        self.node_config = node_config or {}
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, FLWR_HOME=str(self.dir / "flwr_home"), FLWR_TELEMETRY_ENABLED="0",
                        FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1",
                        # the SuperLink/SuperNodes start flower-superexec and flwr-*app by name
                        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        self.env.setdefault("DETECTLAB_THREADS", "1")

    # ---- helpers
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.dir,
                             start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def _flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([_bin("flwr"), *args], env=self.env, cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout)

    def _certs(self) -> tuple[Path, Path, Path]:
        d = self.dir / "certs"
        d.mkdir(exist_ok=True)
        ca, key, crt = d / "ca.crt", d / "server.key", d / "server.pem"
        if not crt.exists():
            run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)  # noqa: E731
            run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "2", "-subj", "/CN=detectlab-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
            run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=localhost")
            (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                          "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
            run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
        return ca, key, crt

    def _write_connection(self) -> None:
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        sec = f'address = "127.0.0.1:{self.port}"\n'
        sec += f"root-certificates = {_q(self._certs()[0])}\n" if self.tls else "insecure = true\n"
        (home / "config.toml").write_text(f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n{sec}')

    def _wait_health(self, timeout: float = 60) -> None:
        url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/health"
        ctx = None
        if self.tls:
            import ssl

            ctx = ssl.create_default_context(cafile=str(self._certs()[0]))
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"SuperLink exited: {(self.dir / 'superlink.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"SuperLink not healthy after {timeout} s")

    # ---- lifecycle
    def start(self) -> "LocalDeployment":
        self._write_connection()
        link = [_bin("flower-superlink"), "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                "--port", str(self.port), "--database", str(self.dir / "link.db")]
        if self.tls:
            ca, key, crt = self._certs()
            link += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(crt), "--ssl-keyfile", str(key)]
            if self.auth:
                link += ["--enable-supernode-auth"]
        else:
            link += ["--insecure"]
        self._spawn("superlink", link)
        self._wait_health()
        for i in range(self.n_nodes):
            node = [_bin("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
                    "--port", str(free_port()),
                    "--node-config", self.node_config.get(i, f"partition-id={i} num-partitions={self.n_nodes}")]
            if self.tls:
                node += ["--root-certificates", str(self._certs()[0])]
                if self.auth:
                    key = self.dir / "keys" / f"node{i}"
                    key.parent.mkdir(exist_ok=True)
                    if not key.exists():
                        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)],
                                       check=True, capture_output=True)
                    r = self._flwr("supernode", "register", str(key) + ".pub", "deploy")
                    if r.returncode != 0:
                        raise RuntimeError(f"flwr supernode register failed: {r.stdout}{r.stderr}")
                    node += ["--auth-supernode-private-key", str(key)]
            else:
                node += ["--insecure"]
            self._spawn(f"supernode{i}", node)
        return self

    def run_app(self, app_dir: Path, run_config: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
        """`flwr run APP deploy --stream`: returns when the run has finished (or raises on timeout)."""
        args = ["run", str(Path(app_dir).resolve()), "deploy", "--stream"]
        if run_config:
            args += ["--run-config", run_config]
        return self._flwr(*args, timeout=timeout)

    def stop(self) -> None:
        for p in reversed(self.procs):  # SuperNodes first, then the SuperLink
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 15
        for p in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:  # anything left in the group (flwr-serverapp, flwr-clientapp, superexec)
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(self.dir.glob("*.log")))

    def __enter__(self) -> "LocalDeployment":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
