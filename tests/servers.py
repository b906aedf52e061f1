"""Start real servers for tests on free loopback ports and stop their whole process group afterwards."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

MILVUS_SERVER = Path(sys.executable).parent / "milvus-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"server exited with code {process.returncode} before listening:\n{output}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the whole group (servers fork children that outlive their parent), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    # The group outlives its leader while children (e.g. the milvus binary) are still exiting.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@contextlib.contextmanager
def server_process(
    args: list[str], port: int, log: Path, *, timeout: float = 60, env: dict | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})}, cwd=cwd,
        )
    try:
        wait_for_port(port, timeout, process, log)
        yield process
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def milvus_server(data_dir: Path, port: int):
    """The standalone Milvus 2.3.5 server of the `milvus` package; its whole process group is stopped after.

    Its embedded etcd would take the fixed ports 2379/2380; an etcd config file (read from ETCD_CONFIG_PATH)
    moves them to free ones so servers can run side by side. Restarting on the same `data_dir` reuses the
    same ports and keeps the data.

    The proxy port is pinned with `--extra-config proxy.port=…`: `--proxy-port` alone is only a wish to the
    `milvus-server` wrapper, which probes each port with a plain bind() (no SO_REUSEADDR) and silently takes
    the next one when that fails. After a kill, the old server's side of its client connections sits in
    TIME_WAIT for 60 s, the probe fails, and the restarted server listened on port+1 while callers waited
    on `port`. Milvus itself (Go) binds with SO_REUSEADDR, so TIME_WAIT does not stop it.
    """
    etcd_config = data_dir / "etcd.yaml"
    if not etcd_config.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        etcd_config.write_text(
            f"name: default\ndata-dir: {data_dir / 'etcd'}\nlisten-client-urls: {client}\n"
            f"advertise-client-urls: {client}\nlisten-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: default={peer}\n"
        )
    etcd_ports = [int(url.rsplit(":", 1)[1]) for url in re.findall(r"listen-\w+-urls: (\S+)", etcd_config.read_text())]
    wait_until_free([port, *etcd_ports], timeout=120)  # a previous server on this data dir has let go
    args = [str(MILVUS_SERVER), "--data", str(data_dir), "--proxy-port", str(port),
            "--etcd-port", str(etcd_ports[0]), "--extra-config", f"proxy.port={port}"]
    process = None
    try:
        with server_process(args, port, data_dir.parent / f"milvus-{port}.log", timeout=300,
                            env={"ETCD_CONFIG_PATH": str(etcd_config)}) as process:
            wait_until_serving(f"http://127.0.0.1:{port}", timeout=240)
            yield process
    finally:
        if process is not None:  # stop_process_group waits for the wrapper only, not for its children
            wait_until_gone(process, timeout=60)


def kill_process_group(process: subprocess.Popen) -> None:
    """The realistic fault: SIGKILL to the server's whole process group (wrapper and the milvus binary)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    wait_until_gone(process, timeout=60)


def wait_until_gone(process: subprocess.Popen, timeout: float) -> None:
    """Until no process of the group is left: the wrapper exiting says nothing about the milvus binary."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process group {process.pid} still has processes {timeout}s after it was stopped")
        time.sleep(0.2)


def wait_until_free(ports: list[int], timeout: float) -> None:
    """Until nothing listens on these ports (bindable the way the server binds: SO_REUSEADDR, so the
    TIME_WAIT left by a killed server's connections does not count)."""
    deadline = time.monotonic() + timeout
    while busy := [port for port in ports if not _bindable(port)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ports {busy} on 127.0.0.1 are still in use after {timeout}s")
        time.sleep(0.5)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until_serving(uri: str, timeout: float) -> None:
    """The proxy port opens before the server answers (longer after a kill: it recovers its old session)."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    deadline = time.monotonic() + timeout
    while True:
        try:
            client = MilvusClient(uri=uri, timeout=5, dedicated=True)
            client.list_collections()
            client.close()
            return
        except MilvusException:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@contextlib.contextmanager
def background_process(args: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None
                       ) -> Iterator[subprocess.Popen]:
    """A server with no port of its own to wait for (dagster-daemon); its whole group is stopped after.
    The log is appended to, so a server restarted on the same log keeps its history."""
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})}, cwd=cwd)
    try:
        yield process
    finally:
        stop_process_group(process)
