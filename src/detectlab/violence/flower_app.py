"""Flower's two engines on this machine: the app folder, a simulation SuperLink, and a deployment on loopback.

``write_app(folder, ...)`` writes a Flower app (pyproject.toml only): its components are
``detectlab.violence.server_app:app`` and ``detectlab.violence.client_app:app`` (or the fault-injecting
``detectlab.violence.faults:app``) from the installed package; its run config carries the detectlab preset,
overrides (``k=v;k=v``) and run folder (deployment), or a job file (simulation). By hand::

    flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key \\
        --enable-supernode-auth --disable-runtime-dependency-installation --host 127.0.0.1 --port 9093
    flwr supernode register node0.pub deploy
    flower-supernode --root-certificates ca.crt --auth-supernode-private-key node0 --superlink 127.0.0.1:9093 \\
        --port 9094 --node-config "partition-id=0 data-dir=/site0/clips state-dir=/site0/flower"
    flwr run APP deploy --stream          # a [superlink.deploy] connection in $FLWR_HOME/config.toml

:class:`LocalSimulation` is a simulation SuperLink (``flower-superlink --simulation``) that runs an app with
``flwr run`` (Flower 1.42's supported way; ``flwr.simulation.run_simulation`` is deprecated).
:class:`LocalDeployment` is a SuperLink and SuperNodes on 127.0.0.1 with free ports, TLS by default
(a throw-away CA and a server certificate for 127.0.0.1/localhost, made with ``openssl``), optional SuperNode
authentication (EC keys made with ``ssh-keygen``, registered with ``flwr supernode register``), per-node
data and state folders, and helpers to kill, restart and add (also unwanted) nodes. Keys and certificates are
made at run time inside the deployment folder, in a folder only the owner can open (0700) with owner-only
files (0600 for keys); only their paths are ever passed or printed, never their contents.

Every process started here carries an environment tag; :meth:`stop` ends all processes with that tag (also
the ``flower-superexec``, ``flwr-serverapp``/``flwr-clientapp``/``flwr-simulation`` children and Ray processes
that outlive their parents): SIGTERM by process id, then SIGKILL.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

APP_NAME = "detectlab-violence"
CLIENTAPP = "detectlab.violence.client_app:app"
FAULTY_CLIENTAPP = "detectlab.violence.faults:app"
TAG = "DETECTLAB_FLOWER_TAG"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _q(v: str) -> str:
    return json.dumps(str(v))  # a TOML basic string


def write_app(folder: Path, preset: str = "smoke", overrides: list[str] | None = None,
              out: Path | str = "runs/violence-deploy", *, extra: dict[str, str] | None = None,
              clientapp: str = CLIENTAPP) -> Path:
    """The Flower app folder (pyproject.toml); `extra` adds string keys to its run config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ov = ";".join(overrides or [])
    more = "".join(f"{k} = {_q(v)}\n" for k, v in (extra or {}).items())
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
clientapp = "{clientapp}"

[tool.flwr.app.config]
preset = {_q(preset)}
overrides = {_q(ov)}
out = {_q(Path(out).expanduser().resolve())}
{more}""")
    return folder


def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


def private_dir(path: Path, secret: bool = False) -> Path:
    """A folder only its owner can list or enter (0700); a secret one also tells git to ignore everything
    in it (its own .gitignore), wherever the run folder is."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if secret and not (path / ".gitignore").exists():
        (path / ".gitignore").write_text("# keys and certificates made at run time: never commit them\n*\n")
    return path


def _tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries our tag (children, grandchildren and orphans alike)."""
    me, out = os.getpid(), []
    needle = f"{TAG}={tag}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return out


class _Processes:
    """Processes started by one object, all tagged, all ended by :meth:`stop`."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex
        self.procs: dict[str, subprocess.Popen] = {}
        home = private_dir(self.dir / "flwr_home")
        tmp = self.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        self.env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                        PYTHONUNBUFFERED="1", COLUMNS="250", RAY_TMPDIR=str(tmp), RAY_USAGE_STATS_ENABLED="0",
                        RAY_DEDUP_LOGS="0", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
                        # the SuperLink/SuperNodes start flower-superexec and flwr-*app by name
                        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        self.env.setdefault("DETECTLAB_THREADS", "1")
        self.env.update(env or {})
        self.env[TAG] = self.tag

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running")
        with open(self.dir / f"{name}.log", "a") as log:
            p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(self.env, **(env or {})),
                                 cwd=self.dir, start_new_session=True)
        self.procs[name] = p
        return p

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([_bin("flwr"), *args], env=self.env, cwd=self.dir, capture_output=True, text=True,
                              timeout=timeout)

    def signal(self, name: str, sig: int = signal.SIGTERM, wait: float = 15) -> None:
        """Send `sig` to one started process (and its process group) and wait for it."""
        p = self.procs[name]
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)

    def stop(self) -> None:
        """End every process we started, even the ones that outlived their parents."""
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _tagged_pids(self.tag)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            t0 = time.time()
            while pids and time.time() - t0 < 5:
                time.sleep(0.2)
                pids = _tagged_pids(self.tag)
        for p in self.procs.values():
            try:
                p.wait(1)
            except subprocess.TimeoutExpired:
                pass

    def alive(self) -> list[int]:
        """Ids of our processes still running (for checks that nothing is left)."""
        return _tagged_pids(self.tag)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}" for f in sorted(self.dir.glob("*.log")))

    def _wait_health(self, name: str, url: str, ctx=None, timeout: float = 60) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.dir / f'{name}.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"{name} not healthy after {timeout} s")

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):  # pragma: no cover - overridden
        return self


class RunHandle:
    """A `flwr run --stream` in the background; `lines` collects its output."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log = proc, log

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise TimeoutError(f"the Flower run did not finish within {timeout:.0f} s") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class LocalSimulation(_Processes):
    """A simulation SuperLink on 127.0.0.1 (`flower-superlink --simulation`), for `flwr run APP sim`."""

    def start(self) -> "LocalSimulation":
        self.port = free_port()
        (Path(self.env["FLWR_HOME"]) / "config.toml").write_text(
            f'[superlink]\ndefault = "sim"\n\n[superlink.sim]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.spawn("superlink", [_bin("flower-superlink"), "--simulation", "--insecure",
                                 "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                                 "--port", str(self.port)])
        self._wait_health("superlink", f"http://127.0.0.1:{self.port}/health")
        return self

    def submit(self, app_dir: Path, num_supernodes: int, num_cpus: int = 2, num_gpus: float = 0.0,
               client_gpus: float = 0.0) -> RunHandle:
        fed = (f"num-supernodes={int(num_supernodes)} client-resources-num-cpus=1 "
               f"client-resources-num-gpus={client_gpus} init-args-num-cpus={max(1, int(num_cpus))} "
               f"init-args-num-gpus={num_gpus} init-args-logging-level=\"ERROR\" init-args-log-to-driver=false")
        log = self.dir / "flwr-run.log"
        with open(log, "w") as fh:
            p = subprocess.Popen([_bin("flwr"), "run", str(Path(app_dir).resolve()), "sim", "--stream",
                                  "--federation-config", fed], stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                 cwd=self.dir, start_new_session=True)
        self.procs[f"flwr-run-{len(self.procs)}"] = p
        return RunHandle(p, log)


class LocalDeployment(_Processes):
    """A SuperLink and `n_nodes` SuperNodes on 127.0.0.1, stopped on exit (use as a context manager).

    ``node_config``: per node index, extra ``key=value`` node-config items (e.g. ``data-dir=...``); every
    node gets ``partition-id=<i>`` and a private ``state-dir`` under the deployment folder unless given.
    ``link_env``: extra environment for the SuperLink and everything it starts (the ServerApp).
    ``warm`` (default): each SuperNode runs in process isolation next to a warm SuperExec
    (:mod:`.warm_exec`: the ClientApp of every message is forked from a process that imported torch and Flower
    once, about 5 s of CPU less per message); ``warm=False`` runs Flower's stock subprocess executor.
    """

    def __init__(self, workdir: Path, n_nodes: int = 2, tls: bool = True, auth: bool = False,
                 node_config: dict[int, str] | None = None, link_env: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, secrets: Path | None = None, cert_name: str = "server",
                 san: tuple[str, ...] = ("IP:127.0.0.1", "DNS:localhost"), warm: bool = True):
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses --enable-supernode-auth with "
                             "--insecure)")
        super().__init__(workdir, env)
        self.n_nodes, self.tls, self.auth = n_nodes, tls, auth
        self.node_config = dict(node_config or {})
        self.link_env = dict(link_env or {})
        self.port = free_port()
        self.node_ports: dict[str, int] = {}
        self.secrets = private_dir(Path(secrets) if secrets else self.dir / "secrets", secret=True)
        self.cert_name, self.san = cert_name, list(san)
        self.warm = warm

    # ---- keys and certificates (owner-only, made at run time, never printed)
    def certs(self) -> tuple[Path, Path, Path]:
        """(ca.crt, <name>.key, <name>.pem): the CA and the SuperLink's certificate (127.0.0.1/localhost)."""
        return make_certs(self.secrets, self.cert_name, self.san)

    def node_key(self, name: str, register: bool = True) -> Path:
        """An EC key pair for a SuperNode (OpenSSH format), registered with the SuperLink unless told not to."""
        key = self.secrets / f"{name}.key"
        if not key.exists():
            old = os.umask(0o077)
            try:
                subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", name, "-f", str(key)],
                               check=True, capture_output=True)
            finally:
                os.umask(old)
            os.chmod(key, 0o600)
        if register:
            r = self.flwr("supernode", "register", str(key) + ".pub", "deploy")
            if r.returncode != 0 and "already" not in (r.stdout + r.stderr).lower():
                raise RuntimeError(f"flwr supernode register {key.name}.pub failed: "
                                   f"{(r.stdout + r.stderr).strip().splitlines()[-1:]}")
        return key

    def _write_connection(self) -> None:
        sec = f'address = "127.0.0.1:{self.port}"\n'
        sec += f"root-certificates = {_q(self.certs()[0])}\n" if self.tls else "insecure = true\n"
        (Path(self.env["FLWR_HOME"]) / "config.toml").write_text(f'[superlink]\ndefault = "deploy"\n\n'
                                                                  f'[superlink.deploy]\n{sec}')

    # ---- lifecycle
    def start_superlink(self) -> None:
        link = [_bin("flower-superlink"), "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                "--port", str(self.port), "--database", str(self.dir / "link.db")]
        if self.tls:
            ca, key, crt = self.certs()
            link += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(crt), "--ssl-keyfile", str(key)]
            if self.auth:
                link += ["--enable-supernode-auth"]
        else:
            link += ["--insecure"]
        self.spawn("superlink", link, env=self.link_env)
        ctx = None
        if self.tls:
            import ssl

            ctx = ssl.create_default_context(cafile=str(self.certs()[0]))
        self._wait_health("superlink", f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/health", ctx)

    def node_args(self, i: int | str, *, config: str | None = None, root_cert: Path | str | None = "default",
                  key: Path | None | str = "default", insecure: bool | None = None, max_wait: float | None = None
                  ) -> list[str]:
        """flower-supernode arguments for node `i` (an index, or a name for extra nodes)."""
        name = f"supernode{i}" if isinstance(i, int) else str(i)
        port = self.node_ports.setdefault(name, free_port())
        if config is None:
            state = self.dir / "nodes" / name / "state"
            cfg = self.node_config.get(i, "") if isinstance(i, int) else ""
            config = f"partition-id={i} " if isinstance(i, int) and "partition-id" not in cfg else ""
            config += cfg + ("" if "state-dir" in cfg else f" state-dir={_q(state)}")
        args = [_bin("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
                "--port", str(port), "--node-config", config.strip()]
        if max_wait is not None:
            args += ["--max-wait-time", str(max_wait)]
        if insecure if insecure is not None else not self.tls:
            args += ["--insecure"]
        if root_cert == "default":
            root_cert = self.certs()[0] if self.tls else None
        if root_cert:
            args += ["--root-certificates", str(root_cert)]
        if key == "default":
            key = self.node_key(name) if self.auth else None
        if key:
            args += ["--auth-supernode-private-key", str(key)]
        return args

    def start_node(self, i: int | str, **kw) -> subprocess.Popen:
        """Start SuperNode `i`; with ``warm``, in process isolation next to a warm SuperExec (:mod:`.warm_exec`)."""
        name = f"supernode{i}" if isinstance(i, int) else str(i)
        args = self.node_args(i, **kw)
        if not self.warm:
            return self.spawn(name, args)
        node = self.spawn(name, args + ["--isolation", "process"])
        self.spawn(f"warm-{name}", [sys.executable, "-m", "detectlab.violence.warm_exec", "--runtime-api-address",
                                    f"127.0.0.1:{self.node_ports[name]}", "--insecure", "--parent-pid", str(node.pid)])
        return node

    def start(self) -> "LocalDeployment":
        self._write_connection()
        self.start_superlink()
        for i in range(self.n_nodes):
            self.start_node(i)
        return self

    def kill_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        self.signal(f"supernode{i}", sig)

    def restart_node(self, i: int, wait: float = 180.0, settle: float = 20.0, retry_every: float = 5.0) -> subprocess.Popen:
        """Start node `i` again with the same node config (same partition, data and state folders).

        A SuperNode killed without a goodbye stays registered as online on the SuperLink until it misses its
        heartbeats; a restart with the same key inside that window is refused (`[code: 2004] Failed to
        activate SuperNode`, exit 305). The restart is retried every few seconds until the SuperLink has let
        the old registration go, for at most `wait` seconds."""
        name = f"supernode{i}"
        if self.procs[name].poll() is None:
            self.kill_node(i, signal.SIGTERM)
        log = self.dir / f"{name}.log"
        deadline = time.monotonic() + wait
        while True:
            start = log.stat().st_size if log.exists() else 0
            node = self.start_node(i)
            t_up = time.monotonic() + settle
            while node.poll() is None and time.monotonic() < t_up:
                time.sleep(0.5)
            if node.poll() is None:
                return node  # activated (a refused activation exits within seconds)
            with open(log, errors="replace") as fh:
                fh.seek(start)
                refused = "code: 2004" in fh.read()
            if not refused or time.monotonic() > deadline:
                return node
            if f"warm-{name}" in self.procs:
                self.signal(f"warm-{name}", signal.SIGTERM)
            time.sleep(retry_every)

    def restart_superlink(self) -> None:
        """Stop the SuperLink (and the ServerApp it runs) and start it again on the same port and database."""
        self.signal("superlink", signal.SIGTERM)
        self.start_superlink()

    def online_nodes(self) -> list[dict]:
        r = self.flwr("supernode", "ls", "deploy", "--format", "json")
        try:
            data = json.loads(r.stdout)
        except json.JSONDecodeError:
            return []
        nodes = data.get("nodes", data if isinstance(data, list) else [])
        return [n for n in nodes if str(n.get("status", "")).lower() == "online"]

    def submit(self, app_dir: Path, run_config: str = "") -> RunHandle:
        """`flwr run APP deploy --stream` in the background."""
        args = [_bin("flwr"), "run", str(Path(app_dir).resolve()), "deploy", "--stream"]
        if run_config:
            args += ["--run-config", run_config]
        n = sum(1 for k in self.procs if k.startswith("flwr-run"))
        log = self.dir / f"flwr-run-{n}.log"
        with open(log, "w") as fh:
            p = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.dir,
                                 start_new_session=True)
        self.procs[f"flwr-run-{n}"] = p
        return RunHandle(p, log)

    def run_app(self, app_dir: Path, run_config: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
        """`flwr run APP deploy --stream`: returns when the run has finished (or raises on timeout)."""
        h = self.submit(app_dir, run_config)
        rc = h.wait(timeout)
        return subprocess.CompletedProcess(h.proc.args, rc, h.output(), "")


def make_certs(d: Path, name: str, san: list[str], ca_name: str = "ca") -> tuple[Path, Path, Path]:
    """A CA (made once per folder) and a server certificate `name` for the subject alternative names `san`.

    Files are created with umask 077 (keys 0600) in `d`, which should be a private folder."""
    d = private_dir(Path(d), secret=True)
    ca, ca_key = d / f"{ca_name}.crt", d / f"{ca_name}.key"
    key, crt = d / f"{name}.key", d / f"{name}.pem"
    old = os.umask(0o077)
    try:
        run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)  # noqa: E731
        if not ca.exists():
            run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key.name, "-out", ca.name,
                "-days", "2", "-subj", f"/CN=detectlab-{ca_name}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        if not crt.exists():
            cn = san[0].split(":", 1)[1]
            run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", f"{name}.csr",
                "-subj", f"/CN={cn}")
            (d / f"{name}.ext").write_text(f"subjectAltName={','.join(san)}\nbasicConstraints=CA:FALSE\n"
                                           "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
            run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", ca.name, "-CAkey", ca_key.name,
                "-CAcreateserial", "-out", crt.name, "-days", "2", "-extfile", f"{name}.ext")
    finally:
        os.umask(old)
    for f in d.iterdir():
        if f.name != ".gitignore":
            os.chmod(f, 0o600)
    return ca, key, crt


# ---- the sites of a loopback deployment: each SuperNode's own folder of clips
def make_sites(data: Path, folder: Path, experiment: str, clients: int = 4, alpha: float = 0.5,
               test_fraction: float = 0.25, seed: int = 0) -> list[Path]:
    """Deal the clips of one labelled folder to the sites of `experiment`, one folder per site.

    This is the data owners' side, done on this machine only because every site lives on it: the clips
    are split by source video into train and held-out sets and dealt to the sites with the experiment's
    class fractions (:func:`detectlab.violence.partition.make_partition`, one unit per clip, so no video
    is decoded here). Site ``k`` gets ``<folder>/site<k>/<label>/<clip>`` (symbolic links to the clips),
    ``videos.txt`` (its clips' source videos) and ``test.txt`` (its held-out clips). A SuperNode is then
    started with ``--node-config "partition-id=k data-dir=<folder>/site<k>"``.
    """
    import numpy as np

    from detectlab.violence.data import find_clips
    from detectlab.violence.partition import make_partition, n_clients_of

    clips = find_clips(Path(data))
    k = n_clients_of(experiment, clients)
    labels = np.asarray([c.label for c in clips])
    groups = np.asarray([c.group for c in clips])
    train, test = make_partition(labels, groups, np.ones(len(clips)), experiment, k, alpha, test_fraction, seed)
    root = Path(data).resolve()
    sites = []
    for i in range(k):
        site = Path(folder) / f"site{i}"
        if site.exists():
            shutil.rmtree(site)
        held = []
        lines = []
        for j in sorted(np.concatenate([train[i], test[i]]).tolist()):
            c = clips[j]
            rel = c.path.resolve().relative_to(root) if c.path.resolve().is_relative_to(root) else Path(c.path.name)
            name = "__".join(rel.parts)
            dst = site / ("fight" if c.label == 1 else "noFight") / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(c.path.resolve())
            lines.append(f"{c.group}\n{Path(name).stem}: 0 - 0")
            if j in set(test[i].tolist()):
                held.append(name)
        (site / "videos.txt").write_text("\n".join(_source_lines(lines)) + "\n")
        (site / "test.txt").write_text("\n".join(sorted(held)) + "\n")
        sites.append(site)
    return sites


def _source_lines(pairs: list[str]) -> list[str]:
    """videos.txt lines: a source line (a URL-like name) followed by its clips' '<clip>: 0 - 0' lines."""
    by_src: dict[str, list[str]] = {}
    for p in pairs:
        src, clip = p.split("\n")
        by_src.setdefault(src, []).append(clip)
    out = []
    for src, cl in sorted(by_src.items()):
        out.append(src if src.startswith(("http://", "https://")) else f"https://source.invalid/{src.replace(' ', '_')}")
        out += cl
    return out


class InProcessGrid(Grid):
    """A Flower Grid in this process: real ClientApp handlers and real Messages, no transport (for the
    benchmark's per-round work and the tests). Each node has its own node config and Context (its
    ``context.state`` lives as long as the node); a node can be made silent (never replies, like a SuperNode
    killed mid-round), mute for some message types, or restarted (a fresh Context: the in-memory state is
    gone, node-local storage is not). ``sent`` keeps every message pushed."""

    def __init__(self, client_app, node_configs: list[dict], first_id: int = 100):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app = client_app
        self.ids = itertools.count(1)
        self.nodes: dict[int, Context] = {}
        self.silent: set[int] = set()  # nodes that never reply (killed)
        self.unavailable: set[int] = set()  # the SuperLink answers for them: "Node Unavailable" (from node 0)
        self.mute: dict[int, set[str]] = {}  # node -> message types it never answers
        self.offline: set[int] = set()
        self.sent: list[Message] = []
        self._pending: dict[str, Message] = {}
        self._next_node = itertools.count(first_id)
        for nc in node_configs:
            self.add_node(nc)

    def add_node(self, node_config: dict) -> int:
        nid = next(self._next_node)
        self.nodes[nid] = Context(run_id=1, node_id=nid, node_config=dict(node_config), state=RecordDict(),
                                  run_config={})
        return nid

    def restart(self, nid: int, same_id: bool = True) -> int:
        """A restarted SuperNode: same node config, fresh Context (context.state is lost)."""
        cfg = self.nodes[nid].node_config
        self.silent.discard(nid)
        if same_id:
            self.nodes[nid] = Context(run_id=1, node_id=nid, node_config=dict(cfg), state=RecordDict(), run_config={})
            return nid
        self.offline.add(nid)
        return self.add_node(cfg)

    # ---- Grid API
    def set_run(self, run_id):  # noqa: D102
        pass

    @property
    def run(self):  # noqa: D102
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: D102
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self):
        return [n for n in self.nodes if n not in self.offline]

    def push_messages(self, messages):
        ids = []
        for m in messages:
            mid = f"m{next(self.ids)}"
            m.metadata.__dict__["_message_id"] = mid
            self.sent.append(m)
            self._pending[mid] = m
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        out = []
        for mid in list(message_ids):
            m = self._pending.get(mid)
            dst = m.metadata.dst_node_id if m is not None else None
            if m is None or dst in self.silent or dst in self.offline or \
                    m.metadata.message_type in self.mute.get(dst, ()):
                continue
            del self._pending[mid]
            if dst in self.unavailable:  # like the SuperLink once a node missed its heartbeats
                reply = Message(Error(code=0, reason="Error: Node Unavailable - the destination node failed to "
                                      "report a heartbeat"), reply_to=m)
                reply.metadata.__dict__["_src_node_id"] = 0
                reply.metadata.__dict__["_message_id"] = f"r{next(self.ids)}"
                out.append(reply)
                continue
            ctx = self.nodes[m.metadata.dst_node_id]
            try:
                reply = self.app(m, ctx)
            except Exception as e:  # noqa: BLE001 - the SuperNode turns a ClientApp exception into an error reply
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=m)
            reply.metadata.__dict__["_message_id"] = f"r{next(self.ids)}"
            out.append(reply)
        return out

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
