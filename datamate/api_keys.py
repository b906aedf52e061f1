"""API keys and per-key rate limits for the retrieval service (`datamate serve`).

Keys come from `DATAMATE_API_KEYS` and/or a mounted file named by `DATAMATE_API_KEYS_FILE`: one entry per line
(or separated by `;`), `name:key[:dataset,dataset…]`; without datasets a key reads every dataset. A key may be
stored hashed as `name:sha256:<64 hex digits>[:datasets]` (`datamate serve --hash-key KEY` prints the digest).
Blank lines and lines starting with `#` are skipped. Presented keys are hashed and compared with every stored
digest in constant time; only a key's name is ever logged.
"""

import hashlib
import hmac
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9_.@-]+$")
DATASET = re.compile(r"^[A-Za-z0-9_]+$")
HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes
    datasets: frozenset[str] | None  # None: every dataset

    def allows(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets


def parse_api_keys(text: str, source: str) -> list[ApiKey]:
    """Entries of `text`; a malformed one raises ValueError naming `source` and the entry's number (never the key)."""
    keys = []
    entries = [entry.strip() for line in text.splitlines() for entry in line.split(";")]
    for number, entry in enumerate((e for e in entries if e and not e.startswith("#")), start=1):
        parts = entry.split(":")
        where = f"{source}: entry {number}"
        if len(parts) < 2 or not NAME.match(parts[0]):
            raise ValueError(f"{where} (name {parts[0]!r}) is not `name:key[:dataset,…]`")
        name = parts[0]
        if parts[1] == "sha256":
            if len(parts) < 3 or not HEX_DIGEST.match(parts[2]):
                raise ValueError(f"{where} (name {name!r}): a hashed key is `name:sha256:<64 hex digits>[:datasets]`")
            key_digest, rest = bytes.fromhex(parts[2]), parts[3:]
        else:
            if len(parts[1]) < 16:
                raise ValueError(f"{where} (name {name!r}): the key is shorter than 16 characters")
            key_digest, rest = digest(parts[1]), parts[2:]
        if len(rest) > 1:
            raise ValueError(f"{where} (name {name!r}): too many `:` parts (keys cannot contain `:`)")
        datasets = None
        if rest:
            datasets = frozenset(d.strip() for d in rest[0].split(",") if d.strip())
            if not datasets or not all(DATASET.match(d) for d in datasets):
                raise ValueError(f"{where} (name {name!r}): datasets must be a comma-separated list of dataset names")
        keys.append(ApiKey(name, key_digest, datasets))
    return keys


def load_api_keys(environ: dict[str, str] | None = None) -> list[ApiKey]:
    env = os.environ if environ is None else environ
    keys = parse_api_keys(env.get("DATAMATE_API_KEYS", ""), "DATAMATE_API_KEYS")
    if path := env.get("DATAMATE_API_KEYS_FILE"):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"DATAMATE_API_KEYS_FILE {path}: cannot be read ({error.strerror})") from error
        keys += parse_api_keys(text, path)
    names = [key.name for key in keys]
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"API key names must be unique; repeated: {duplicates}")
    return keys


class KeyRing:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key matching `presented`; every stored digest is compared (no early exit), in constant time."""
        presented_digest = digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, presented_digest):
                found = key
        return found


class RateLimiter:
    """A token bucket per key name: `rate` requests per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when)
        self._lock = threading.Lock()

    def acquire(self, name: str) -> int:
        """0 when the request may go ahead, else the whole seconds to wait (for `Retry-After`)."""
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0
            self._buckets[name] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))
