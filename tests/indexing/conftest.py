"""Fixtures for indexing: the packaged embedding model, Milvus Lite in a temp dir, the Milvus 2.3 server."""

import contextlib
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

    Its embedded etcd would take the fixed peer port 2380; an etcd config file (read from ETCD_CONFIG_PATH)
    moves both etcd ports to free ones so servers can run side by side. Restarting on the same `data_dir`
    reuses the same ports and keeps the data.
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
    client_port = etcd_config.read_text().split("listen-client-urls: http://127.0.0.1:")[1].split()[0]
    args = [str(MILVUS_SERVER), "--data", str(data_dir), "--proxy-port", str(port), "--etcd-port", client_port]
    with server_process(args, port, data_dir.parent / f"milvus-{port}.log", timeout=300,
                        env={"ETCD_CONFIG_PATH": str(etcd_config)}) as process:
        wait_until_serving(f"http://127.0.0.1:{port}", timeout=240)
        yield process


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
