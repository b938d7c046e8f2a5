"""Accelerator chips: memory, dense bf16 peak and interconnect bandwidth, per chip.

Figures are the vendors' published ones (Cloud TPU system architecture pages, NVIDIA
H100/H200/A100 SXM data sheets; HBM in GiB, as the devices report it).
`interconnect_bytes_per_second` is one direction over all of a chip's links (ICI for
TPUs, NVLink for GPUs): half the bidirectional figure.
"""

import dataclasses

from t5x_lite.errors import ConfigError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    device_kinds: tuple[str, ...]   # substrings of jax's device_kind, lower case
    hbm_bytes: float
    peak_flops: float               # dense bf16 FLOP/s
    interconnect_bytes_per_second: float


# First match wins when matching a device_kind, so "v5 lite" precedes "v5".
CHIPS = (
    Chip("v6e", ("v6 lite", "v6e"), 32 * GIB, 918e12, 400e9),
    Chip("v5e", ("v5 lite", "v5e"), 16 * GIB, 197e12, 200e9),
    Chip("v5p", ("v5p", "v5"), 95 * GIB, 459e12, 600e9),
    Chip("v4", ("v4",), 32 * GIB, 275e12, 300e9),
    Chip("h200", ("h200",), 140 * GIB, 989e12, 450e9),
    Chip("h100", ("h100",), 80 * GIB, 989e12, 450e9),
    Chip("a100", ("a100",), 80 * GIB, 312e12, 300e9),
)


def by_name(name: str) -> Chip:
    for chip in CHIPS:
        if chip.name == name.lower():
            return chip
    raise ConfigError(f"unknown chip {name!r}: use one of {[c.name for c in CHIPS]}.")


def for_device_kind(device_kind: str) -> Chip | None:
    """The chip whose device_kind substring appears in jax's `device_kind`, if any."""
    kind = device_kind.lower()
    for chip in CHIPS:
        if any(substring in kind for substring in chip.device_kinds):
            return chip
    return None


def from_mesh_name(mesh_name: str) -> Chip | None:
    """The chip a mesh config is named after (`v5p-128`, `h100x8`, `2xv5e-256`), if any."""
    name = mesh_name.lower()
    for chip in CHIPS:
        if chip.name in name:
            return chip
    return None
