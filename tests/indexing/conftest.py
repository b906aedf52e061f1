"""Fixtures for indexing: the packaged embedding model, Milvus Lite in a temp dir, the Milvus 2.3 server."""

import pytest

from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.milvus import MilvusResource
from tests.servers import free_port, milvus_server

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
