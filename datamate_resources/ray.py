"""Ray resource: local Ray by default, a cluster from DATAMATE_RAY_ADDRESS in production (built on dagster-ray)."""

from __future__ import annotations

import socket

from dagster_ray import Lifecycle, RayResource
from pydantic import Field


class RayUnreachableError(RuntimeError):
    pass


class DatamateRay(RayResource):
    """Connects `ray` for the step: `ray.init()` locally, or `ray.init(address)` for a cluster.

    If Ray is already initialized in this process (tests, notebooks) that session is used as is.
    """

    address: str | None = Field(None, description="ray://host:10001 or host:6379; None starts a local Ray")
    num_cpus: int | None = Field(None, description="CPUs of a local Ray (None: all)")

    @property
    def host(self) -> str:
        return self.address or "127.0.0.1"

    @property
    def name(self) -> str:
        return f"Ray cluster at {self.address}" if self.address else "local Ray"

    @property
    def ray_address(self) -> str | None:  # type: ignore[override]
        return self.address

    @property
    def dashboard_url(self) -> str | None:  # type: ignore[override]
        """The dashboard of the cluster this step connected to; None when Ray was already up or has none."""
        return getattr(self._context, "dashboard_url", None) or None

    @property
    def created(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return True

    def connect(self, context):
        import ray

        if ray.is_initialized():
            return None
        options = dict(self.ray_init_options)
        if not self.address and self.num_cpus:
            options.setdefault("num_cpus", self.num_cpus)
        options.setdefault("include_dashboard", False)
        options.setdefault("logging_level", "warning")
        try:
            if self.address:
                probe(self.address)
            self._context = ray.init(address=self.address, **options)
        except (OSError, RuntimeError) as error:  # ConnectionError and TimeoutError are OSErrors
            raise RayUnreachableError(
                f"Cannot reach the Ray cluster at {self.address!r} (DATAMATE_RAY_ADDRESS): {error}. "
                "Check the address and that the cluster is up, or unset DATAMATE_RAY_ADDRESS for local Ray."
            ) from error
        return self._context

    def cleanup(self, context, exception):
        if self._context is not None:
            self._context.disconnect()
            self._context = None


def probe(address: str, seconds: float = 10.0) -> None:
    """`ray.init` waits for minutes on an address where nothing answers: a TCP connect fails fast instead."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # e.g. "auto": Ray finds the cluster itself
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
        pass


def build_ray(address: str | None) -> DatamateRay:
    return DatamateRay(address=address, lifecycle=Lifecycle(cleanup="never"))
