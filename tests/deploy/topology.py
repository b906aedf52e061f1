"""The production topology's parts as separate processes on loopback (used by test_topology and bench/).

A Ray cluster of `ray start --head` (no CPUs: it only schedules) plus `ray start --address` workers, and the
Milvus standalone server of the `milvus` package. Every port is a free port and every Ray process keeps its
files under its own temp dir, so several clusters on one machine do not meet.

Every Ray node's address is 127.0.0.2, a loopback address: `ray start` replaces exactly "127.0.0.1",
"localhost" and "::1" by the machine's routable address (`services.resolve_ip_for_localhost`, so that other
machines could join), but any other address of 127.0.0.0/8 is kept as given, and on Linux the whole /8 is the
loopback interface. (The other way round, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, keeps 127.0.0.1 but then
`ray start --address` refuses to add a second node.)
"""

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.servers import background_process, free_port, milvus_server

BIN = Path(sys.executable).parent
NODE_ATTEMPTS = 5  # a 2-core machine at load 15-20 needed more than 3 (see docs/production.md)
WORKER_PORTS = 16  # Ray worker processes per node; each needs a port of its own
# No token auth on this one-machine test cluster (a production cluster sets RAY_AUTH_MODE=token, see
# docs/production.md); set explicitly so a token left in ~/.ray by someone else changes nothing.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
NODE_IP = "127.0.0.2"  # loopback, but not one of the names Ray rewrites (see the module docstring)


def node_port_args() -> list[str]:
    """Every port a Ray node opens, chosen free, so two clusters on one machine never collide."""
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    workers = ",".join(str(free_port()) for _ in range(WORKER_PORTS))
    return [f"--node-ip-address={NODE_IP}", *(f"{flag}={port}" for flag, port in ports.items()),
            f"--worker-port-list={workers}"]


@dataclass
class RayCluster:
    address: str  # host:port of the GCS, what DATAMATE_RAY_ADDRESS takes
    dashboard_url: str  # for Ray's state API (nodes, tasks)
    temp_dir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)


@contextlib.contextmanager
def ray_cluster(workers: int, cpus_per_worker: int, logs: Path, object_store_mb: int = 500) -> Iterator[RayCluster]:
    # Ray puts Unix sockets under its temp dir: keep the path short.
    temp_dir = Path(tempfile.mkdtemp(prefix="dm-ray-", dir="/tmp"))
    gcs_port, dashboard_port, client_port = free_port(), free_port(), free_port()
    common = [f"--object-store-memory={object_store_mb * 1024 * 1024}", "--block"]
    head = [
        str(BIN / "ray"), "start", "--head", f"--port={gcs_port}", "--num-cpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client_port}", f"--temp-dir={temp_dir}", *node_port_args(), *common,
    ]
    cluster = RayCluster(f"{NODE_IP}:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", temp_dir)
    try:
        with contextlib.ExitStack() as stack:
            start_node(stack, head, logs / "ray-head", cluster, 1)
            for index in range(workers):
                args = [
                    str(BIN / "ray"), "start", f"--address={cluster.address}", f"--num-cpus={cpus_per_worker}",
                    *node_port_args(), *common,
                ]
                start_node(stack, args, logs / f"ray-worker-{index}", cluster, index + 2)
            yield cluster
    finally:
        kill_leftovers(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_node(stack: contextlib.ExitStack, args: list[str], log_stem: Path, cluster: RayCluster, alive: int):
    """`ray start` gives its raylet a fixed 30 s to register; on a loaded machine that can fail: retry."""
    for attempt in range(NODE_ATTEMPTS):
        log = log_stem.with_name(f"{log_stem.name}-{attempt}.log")
        process = stack.enter_context(background_process(args, log, env=RAY_ENV))
        if wait_for_nodes(cluster, alive, process):
            if alive > 1:  # a worker node: its `ray start --block` process group, for tests that kill a node
                cluster.workers.append(process)
            return
    raise RuntimeError(f"a Ray node did not start in {NODE_ATTEMPTS} attempts: see {log_stem}-*.log")


def wait_for_nodes(cluster: RayCluster, count: int, process: subprocess.Popen, timeout: float = 300) -> bool:
    """True once `count` nodes are alive; False if the starting process exited first."""
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(Exception):  # the dashboard answers a while after the GCS
            if len([n for n in list_nodes(address=cluster.dashboard_url) if n.state == "ALIVE"]) >= count:
                return True
        time.sleep(1)
    if process.poll() is None:
        raise TimeoutError(f"the Ray cluster did not reach {count} alive nodes within {timeout}s")
    return False


def kill_leftovers(marker: str) -> None:
    """Ray workers can outlive `ray start --block`'s process group: end the ones of this cluster by pid."""
    mine = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(marker in part for part in process.info["cmdline"] or []):
                mine.append(process)
    for process in mine:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(mine, timeout=10)


@contextlib.contextmanager
def milvus_standalone(data_dir: Path) -> Iterator[str]:
    """The Milvus 2.3 standalone server of the `milvus` package (see `tests.servers.milvus_server`); its log
    is beside `data_dir`."""
    port = free_port()
    with milvus_server(data_dir, port):
        yield f"http://127.0.0.1:{port}"
