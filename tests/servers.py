"""Real servers for tests: redis-server (alone, as a cluster, behind Sentinel, over TLS) and
gunicorn, on free loopback ports, never 6379."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import redis
import requests
from redis.cluster import ClusterNode, RedisCluster

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop ``proc`` if it still runs: SIGTERM, then SIGKILL if it has not exited in ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def worker_process(
    env: dict[str, str], name: str, *options: str, lease: float | None = 1.5
) -> Iterator[subprocess.Popen[bytes]]:
    """``tevo-hold worker --lease 1.5`` (and ``options``) as a process (from this checkout),
    output to a temp file. The lease is above the 1 s POS budget of the tests of the http
    adapter, as the command requires; with ``lease`` None, no --lease (TEVO_HOLD_LEASE's)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TEVO_HOLD_")}
    full_env.update(env)
    cmd = [
        sys.executable,
        "-c",
        "from tevo_hold.cli import main; main()",
        "worker",
        *(() if lease is None else ("--lease", f"{lease:g}")),
        "--name",
        name,
        *options,
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode("utf-8", "replace")[-5000:])
            raise
        finally:
            stop_process(proc)


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # anything means "not yet"
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout}s (last error: {last!r})")


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError(
            f"{name} is not installed: `make test` installs Debian's redis-server (which has "
            "redis-cli); or run `apt-get install redis-server`."
        )
    return binary


class RedisProcess:
    """One redis-server on a fixed loopback port, which a test may stop, start, pause, resume.

    ``options`` are extra command-line options (``["--appendonly", "yes"]``, say). The data
    directory lives as long as the object, so a server stopped and started again keeps what it
    persisted (nothing, unless ``options`` turn persistence on).
    """

    def __init__(
        self,
        workdir: Path,
        options: Sequence[str] = (),
        *,
        port: int = 0,
        password: str | None = None,
        tls: Mapping[str, Path] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.options = list(options)
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        listen = (
            ["--port", str(self.port)] if self.tls is None else tls_options(self.tls, self.port)
        )
        auth = ["--requirepass", self.password] if self.password else []
        return [
            _binary("redis-server"),
            *listen,
            *auth,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--maxmemory-policy",
            "noeviction",
            *self.options,
        ]

    def client(self, **kwargs: Any) -> redis.Redis:
        if self.tls is not None:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls["ca"]))
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)

    def start(self, *, wait: bool = True) -> None:
        assert self.proc is None, "already running"
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        with self.client(socket_timeout=1) as client:
            wait_for(client.ping, timeout, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it hangs); a paused one is resumed first."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        stop_process(proc)

    def pause(self) -> None:
        """SIGSTOP: the server stalls, its port still accepts connections, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""


def _log_file(output: Path | None) -> IO[bytes]:
    if output is None:
        return tempfile.TemporaryFile()
    return output.open("w+b")


@contextmanager
def redis_server(options: Sequence[str] = ()) -> Iterator[str]:
    """A private redis-server on a free port; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="tevo-hold-redis-") as workdir:
        server = RedisProcess(Path(workdir), options)
        try:
            server.start()
            yield server.url
        finally:
            server.stop()


# -- Redis Cluster -----------------------------------------------------------------------------


class Cluster:
    """A Redis Cluster of ``masters`` masters (and ``replicas`` replicas each) on loopback."""

    def __init__(self, nodes: list[RedisProcess], masters: int) -> None:
        self.nodes = nodes
        self.masters = masters
        self._clients: dict[int, redis.Redis] = {}

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL of the cluster: every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self, **kwargs: Any) -> RedisCluster:
        nodes = [ClusterNode("127.0.0.1", n.port) for n in self.nodes]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    def node(self, port: int) -> redis.Redis:
        """A client of the one node on ``port`` (kept for the cluster's life)."""
        if port not in self._clients:
            self._clients[port] = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        return self._clients[port]

    def master_ports(self) -> list[int]:
        """The ports of the running nodes that are masters now (they change on failover)."""
        return [
            n.port
            for n in self.nodes
            if n.proc is not None and self.node(n.port).info("replication")["role"] == "master"
        ]

    def flush(self) -> None:
        """Empty every master (replicas follow)."""
        for port in self.master_ports():
            self.node(port).flushall()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node sees the cluster as ok, with all its masters, and
        every replica is in sync with its master."""

        def ok() -> bool:
            for node in self.nodes:
                if node.proc is None:
                    continue
                client = self.node(node.port)
                info = client.cluster("info")
                if info["cluster_state"] != "ok" or int(info["cluster_size"]) != self.masters:
                    return False
                role = client.info("replication")
                if role["role"] != "master" and role["master_link_status"] != "up":
                    return False
            return True

        wait_for(ok, timeout, what="the Redis Cluster")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


@contextmanager
def redis_cluster(
    masters: int = 3,
    replicas: int = 0,
    *,
    node_timeout_ms: int = 10_000,
    options: Sequence[str] = (),
) -> Iterator[Cluster]:
    """A Redis Cluster on free loopback ports (``redis-cli --cluster create``); yields it.

    Each node has its own cluster bus port (``--cluster-port``), so only free ports are used;
    ``options`` are every node's further redis-server options. The node timeout is long unless
    a test wants failovers (it gives 1000): on a loaded machine a node that a busy core let run
    late for 2 s was taken for failed, and the cluster did not settle within wait_ok's 30 s.
    """
    count = masters * (1 + replicas)
    with tempfile.TemporaryDirectory(prefix="tevo-hold-cluster-") as workdir, ExitStack() as stack:
        nodes = []
        for _ in range(count):
            port = free_port()
            node_options = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"{workdir}/nodes-{port}.conf",
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                str(node_timeout_ms),
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                *options,
            ]
            node = RedisProcess(Path(workdir), node_options, port=port)
            stack.callback(node.stop)
            node.start(wait=False)
            nodes.append(node)
        for node in nodes:
            node.wait_ready()
        create = [
            _binary("redis-cli"),
            "--cluster",
            "create",
            *(f"127.0.0.1:{n.port}" for n in nodes),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        ]
        result = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}"
            )
        cluster = Cluster(nodes, masters)
        stack.callback(cluster.close)
        cluster.wait_ok()
        yield cluster


def single_node_cluster(
    workdir: Path, *, port: int = 0, tls: Mapping[str, Path] | None = None
) -> RedisProcess:
    """Start a Redis Cluster of one master holding every slot (TLS on its bus too, with
    ``tls``); the caller stops it."""
    options = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(workdir / f"nodes-{port or 'any'}-{time.monotonic_ns()}.conf"),
        "--cluster-port",
        str(free_port()),
    ]
    if tls is not None:
        options += ["--tls-cluster", "yes"]
    node = RedisProcess(workdir, options, port=port, tls=tls)
    node.start()
    with node.client(socket_timeout=2) as client:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_for(lambda: client.cluster("info")["cluster_state"] == "ok", what="the cluster")
    return node


# -- gunicorn ----------------------------------------------------------------------------------


class Gunicorn:
    """A running ``gunicorn server.wsgi:app``: its URL, its master process, its output so far."""

    def __init__(self, base: str, proc: subprocess.Popen[bytes], log: Any) -> None:
        self.base = base
        self.proc = proc
        self._log = log

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def output(self) -> str:
        self._log.seek(0)
        text: str = self._log.read().decode("utf-8", "replace")
        return text


@contextmanager
def gunicorn_process(
    env: Mapping[str, str],
    *,
    workers: int = 4,
    threads: int = 4,
    args: Sequence[str] = (),
    output: Path | None = None,
    app: str = "server.wsgi:app",
) -> Iterator[Gunicorn]:
    """``gunicorn APP`` (``server.wsgi:app``) with the project's config on a free port.

    Its stdout and stderr go to ``output`` if given (to read its logs), else to a temporary file
    shown only when it fails to start.
    """
    port = free_port()
    # Each server its own metrics directory (gunicorn.conf.py makes one), unless env names one.
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TEVO_HOLD_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    full_env.update(env)
    full_env["TEVO_HOLD_BIND"] = f"127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "server" / "gunicorn.conf.py"),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--access-logfile",
        "/dev/null",
        *args,
        app,
    ]
    base = f"http://127.0.0.1:{port}"
    with _log_file(output) as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        server = Gunicorn(base, proc, log)
        try:
            wait_for(lambda: requests.get(base + "/healthz", timeout=1).ok, what="gunicorn")
            # every worker listening before the test: with reuse_port each binds a socket of its
            # own, and /healthz answers as soon as the first one does
            wait_for(
                lambda: sum(1 for s in worker_sockets(proc.pid, port).values() if s) >= workers,
                what=f"gunicorn's {workers} workers",
            )
            yield server
        except BaseException:
            sys.stderr.write(server.output()[-5000:])
            raise
        finally:
            stop_process(proc, timeout=20)


class RawAnswer:
    """An HTTP/1.1 answer as it came over the wire: status, headers (names lower-cased), body."""

    def __init__(self, raw: bytes) -> None:
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        assert sep, f"no complete answer: {raw[:500]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status_line = status_line
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)


def raw_http(base: str, data: bytes, *, timeout: float = 20.0) -> RawAnswer:
    """Send ``data`` as it is over a new connection to ``base`` (``http://host:port``) and read
    until the server closes it (send ``Connection: close`` with a request it answers well)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our bytes unread: what came before stands
            pass
    return RawAnswer(b"".join(chunks))


# -- the TCP sockets of gunicorn's workers (Linux /proc) ----------------------------------------

#: The states of /proc/net/tcp's "st" column that these helpers read.
TCP_STATES = {"established": "01", "listen": "0A"}


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``: a gunicorn master's workers."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            children.append(int(entry))
    return children


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_inodes(port: int, state: str) -> set[int]:
    code = TCP_STATES[state]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == code:
                inodes.add(int(fields[9]))
    return inodes


def worker_sockets(master_pid: int, port: int, state: str = "listen") -> dict[int, set[int]]:
    """Each worker of a gunicorn master, with the inodes of its TCP sockets on local ``port`` in
    ``state`` (``listen``, or ``established``: the connections it accepted)."""
    on_port = _tcp_inodes(port, state)
    return {pid: _socket_inodes(pid) & on_port for pid in child_pids(master_pid)}


@contextmanager
def gunicorn_server(
    env: Mapping[str, str],
    *,
    workers: int = 4,
    threads: int = 4,
    output: Path | None = None,
) -> Iterator[str]:
    """``gunicorn server.wsgi:app`` with the project's config on a free port; yields its URL."""
    with gunicorn_process(env, workers=workers, threads=threads, output=output) as server:
        yield server.base


# -- Sentinel ----------------------------------------------------------------------------------


class Sentinels:
    """A master, its replica, and one Sentinel watching them as ``service``."""

    def __init__(
        self, master: RedisProcess, replica: RedisProcess, sentinel: RedisProcess, service: str
    ) -> None:
        self.master = master
        self.replica = replica
        self.sentinel = sentinel
        self.service = service

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the master, with the passwords."""
        auth = f":{self.master.password}@" if self.master.password else ""
        query = f"?sentinel_password={self.sentinel.password}" if self.sentinel.password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.sentinel.port}/{self.service}/0{query}"

    def master_port(self) -> int:
        with self.sentinel.client(socket_timeout=2) as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def failover(self, timeout: float = 30.0) -> int:
        """Make the replica the master (SENTINEL FAILOVER); returns the new master's port."""
        before = self.master_port()

        def started() -> bool:
            with self.sentinel.client(socket_timeout=2) as client:
                return bool(client.execute_command("SENTINEL", "FAILOVER", self.service))

        wait_for(started, timeout, what="SENTINEL FAILOVER")  # NOGOODSLAVE for a moment

        def promoted() -> bool:
            port = self.master_port()
            if port == before:
                return False
            with redis.Redis(
                host="127.0.0.1", port=port, password=self.master.password, socket_timeout=1
            ) as client:
                return bool(client.info("replication")["role"] == "master")

        wait_for(promoted, timeout, what="the Sentinel failover")
        return self.master_port()


class _SentinelProcess(RedisProcess):
    """redis-server in Sentinel mode, with a config file of its own (Sentinel rewrites it)."""

    def __init__(self, workdir: Path, config: str, password: str | None) -> None:
        super().__init__(workdir, password=password)
        self.config = self.dir / "sentinel.conf"
        auth = f"requirepass {password}\n" if password else ""
        self.config.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n{auth}{config}")

    def command(self) -> list[str]:
        return [_binary("redis-server"), str(self.config), "--sentinel"]


@contextmanager
def redis_sentinel(
    service: str = "tevo", *, password: str | None = None, sentinel_password: str | None = None
) -> Iterator[Sentinels]:
    """A master, a replica of it, and a Sentinel that monitors them (quorum 1). ``password``:
    the data nodes want it; ``sentinel_password``: the Sentinel wants it."""
    with tempfile.TemporaryDirectory(prefix="tevo-hold-sentinel-") as workdir, ExitStack() as stack:
        root = Path(workdir)
        common = ["--repl-diskless-sync-delay", "0"]
        if password:
            common += ["--masterauth", password]
        master = RedisProcess(root, common, password=password)
        stack.callback(master.stop)
        master.start()
        replica = RedisProcess(
            root, ["--replicaof", "127.0.0.1", str(master.port), *common], password=password
        )
        stack.callback(replica.stop)
        replica.start()

        def linked() -> bool:
            with replica.client(socket_timeout=1) as client:
                return bool(client.info("replication")["master_link_status"] == "up")

        wait_for(linked, 30, what="the replica")  # so the Sentinel finds it at once
        sentinel = _SentinelProcess(
            root,
            f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
            + (f"sentinel auth-pass {service} {password}\n" if password else ""),
            sentinel_password,
        )
        stack.callback(sentinel.stop)
        sentinel.start()
        found = Sentinels(master, replica, sentinel, service)

        def watched() -> bool:
            with sentinel.client(socket_timeout=1) as client:
                replicas = client.sentinel_slaves(service)
            return len(replicas) == 1 and replicas[0]["master-link-status"] == "ok"

        wait_for(watched, 30, what="the Sentinel")
        yield found


# -- HTTP --------------------------------------------------------------------------------------


@contextmanager
def http_server(
    handler: type[http.server.BaseHTTPRequestHandler], *, tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """``handler`` served on a free loopback port from a thread (over TLS with ``tls``); yields
    the base URL, and stops the server at the end."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    with serving(server):
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    """``server`` (bound already) serving from a thread of its own until the block ends, then
    shut down and closed."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- TLS ---------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed: apt-get install openssl")
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    csr, ext = directory / "server.csr", directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]  # quicker than RSA
    ca, ca_key, cert, server_key = (str(files[n]) for n in ("ca", "ca-key", "cert", "key"))
    ca_req = ["req", "-x509", *key, "-nodes", "-days", "2", "-subj", "/CN=ca"]
    server_req = ["req", *key, "-nodes", "-subj", "/CN=127.0.0.1"]
    sign = ["x509", "-req", "-in", str(csr), "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"]
    steps = [
        [*ca_req, "-keyout", ca_key, "-out", ca],
        [*server_req, "-keyout", server_key, "-out", str(csr)],
        [*sign, "-days", "2", "-extfile", str(ext), "-out", cert],
    ]
    for step in steps:
        subprocess.run([openssl, *step], check=True, capture_output=True, timeout=60)
    return files


def tls_options(files: Mapping[str, Path], port: int) -> list[str]:
    """redis-server options to serve TLS only, on ``port``, with ``files`` of make_certificates."""
    return [
        "--tls-port",
        str(port),
        "--port",
        "0",
        "--tls-cert-file",
        str(files["cert"]),
        "--tls-key-file",
        str(files["key"]),
        "--tls-ca-cert-file",
        str(files["ca"]),
        "--tls-auth-clients",
        "no",
    ]
