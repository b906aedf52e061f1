"""Fixtures for indexing: the packaged embedding model, Milvus Lite in a temp dir, the Milvus 2.3 server."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.milvus import MilvusResource
from tests.servers import free_port, server_process

MILVUS_SERVER = Path(sys.executable).parent / "milvus-server"

DOCS = {
    "apt": "APT is the package manager of Debian. Use apt install to add a package and apt remove to drop it. "
    "The sources list in /etc/apt/sources.list names the mirrors. " * 3,
    "net": "Network interfaces are configured in /etc/network/interfaces with ifupdown. "
    "A static address needs address, netmask and gateway lines. " * 3,
    "ssh": "The OpenSSH server listens on port 22. Disable password logins with PasswordAuthentication no "
    "in sshd_config and restart the service. " * 3,
    "boot": "GRUB loads the Linux kernel at boot. Kernel parameters go in GRUB_CMDLINE_LINUX in "
    "/etc/default/grub; run update-grub afterwards. " * 3,
}


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


@pytest.fixture(scope="session")
def embeddings() -> EmbeddingsResource:
    return EmbeddingsResource(provider="local")


@pytest.fixture
def lite(tmp_path) -> MilvusResource:
    return MilvusResource(provider="local", path=str(tmp_path / "milvus.db"))


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory):
    port = free_port()
    data = tmp_path_factory.mktemp("milvus-server") / "data"
    with milvus_server(data, port):
        yield f"http://127.0.0.1:{port}"
