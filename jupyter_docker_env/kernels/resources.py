"""What a kernel (or a run) may use: CPUs, memory and GPUs, parsed and checked in one place.

A kernel start asks for its own size through ``KERNEL_CPUS``, ``KERNEL_MEMORY`` and
``KERNEL_GPUS`` in its environment, which the provisioner reads and never passes into the
container; :func:`kernel_env` turns a request body into them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..models import FieldError

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
MAX_MEMORY = 1024**5  # a PiB: anything larger is a typo
MAX_CPUS = 4096.0


class ResourceError(FieldError):
    """A resource request that cannot be met as written; ``field`` names it."""


def parse_memory(value: str | int) -> int:
    """Bytes from ``"512m"``, ``"2g"``, ``"1.5GiB"`` or a plain number of bytes; 0: no limit."""
    match = _MEMORY.fullmatch(str(value)) if not isinstance(value, bool) else None
    if not match:
        raise ResourceError(
            "memory",
            f"memory limit {str(value)[:40]!r} is not a size: use a number with an optional unit, "
            'e.g. "512m" or "2g" ("0" for no limit)',
        )
    size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if size > MAX_MEMORY:  # also inf, from a number too long for a float
        raise ResourceError("memory", f"memory limit {str(value)[:40]!r} is more than a pebibyte")
    return int(size)


def parse_cpus(value: Any) -> float:
    """A positive, finite number of CPUs."""
    try:
        cpus = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        cpus = math.nan
    if not math.isfinite(cpus) or cpus <= 0 or cpus > MAX_CPUS:
        raise ResourceError("cpus", f"cpus must be a positive number of CPUs, not {value!r}")
    return cpus


def parse_gpus(value: str) -> dict[str, Any] | None:
    """A Docker device request from ``""``/``"none"``, ``"all"``, a count or device ids."""
    if not isinstance(value, str):
        raise ResourceError("gpus", '"gpus" must be a string such as "all", "1" or "0,1"')
    value = value.strip()
    if value in ("", "0", "none"):
        return None
    request: dict[str, Any] = {"driver": "", "capabilities": [["gpu"]]}
    if value == "all":
        return {**request, "count": -1}
    if value.isdigit():
        if int(value) > 1024:
            raise ResourceError("gpus", f"gpus {value!r} is more GPUs than any machine has")
        return {**request, "count": int(value)}
    ids = value.removeprefix("device=").split(",")
    if not all(re.fullmatch(r"[A-Za-z0-9_-]+", i.strip()) for i in ids):
        raise ResourceError(
            "gpus",
            f'gpus {value!r} is not understood: use "all", a number of GPUs, or device ids '
            'such as "0,1" (one id: "device=1")',
        )
    return {**request, "device_ids": [i.strip() for i in ids]}


def container_limits(cpus: Any, memory: Any, gpus: Any) -> dict[str, Any]:
    """ContainerRequest limits (``nano_cpus``, ``mem_limit``, ``device_requests``) for a request
    of CPUs, memory and GPUs; empty or None values set no limit."""
    out: dict[str, Any] = {}
    if cpus:
        out["nano_cpus"] = int(parse_cpus(cpus) * 1e9)
    if memory and (limit := parse_memory(memory)):  # "0": no limit
        out["mem_limit"] = limit
    if gpus and (request := parse_gpus(gpus)):
        out["device_requests"] = (request,)
    return out


@dataclass(frozen=True)
class Resources:
    """A request for CPUs, memory and GPUs, validated."""

    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None

    FIELDS = ("cpus", "memory", "gpus")

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Resources:
        cpus, memory, gpus = body.get("cpus"), body.get("memory"), body.get("gpus")
        if cpus is not None:
            cpus = parse_cpus(cpus)
        if memory is not None:
            if not isinstance(memory, str | int) or isinstance(memory, bool):
                raise ResourceError("memory", 'memory must be a size such as "2g"')
            parse_memory(memory)
            memory = str(memory)
        if gpus is not None:
            parse_gpus(gpus)
        return cls(cpus=cpus, memory=memory, gpus=gpus)

    def to_json(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory": self.memory, "gpus": self.gpus}

    def container_limits(self) -> dict[str, Any]:
        return container_limits(self.cpus, self.memory, self.gpus)

    def kernel_env(self) -> dict[str, str]:
        """The KERNEL_* variables that carry this request to the provisioner."""
        env = {}
        if self.cpus is not None:
            env["KERNEL_CPUS"] = repr(self.cpus)
        if self.memory is not None:
            env["KERNEL_MEMORY"] = self.memory
        if self.gpus is not None:
            env["KERNEL_GPUS"] = self.gpus
        return env


def human_size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"
