"""The accelerator slices `python -m atommem_jax.aot` compiles for, in one table.

A TPU entry is what `jax.experimental.topologies.get_topology_desc` needs to describe the
slice without having it (platform, topology name, chip config, chips per host), plus the
HBM of one chip. Slice names follow Cloud TPU: v5p-N counts TensorCores (N / 2 megacore
chips), v5e-N and v6e-N count chips. "cpu-N" is N host devices standing in for an N-GPU
node (JAX has no CUDA compiler without a GPU): its programs are compiled only to check the
shardings, and its memory is the analytic estimate against an A800 80GB card of which XLA
may take 92% (XLA_PYTHON_CLIENT_MEM_FRACTION in launch/).
"""

from __future__ import annotations

import dataclasses

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  platform: str  # "tpu" or "cpu"
  topology_name: str  # e.g. "v5p:2x2x2"; for "cpu", the device count as text
  chip_config_name: str
  chips_per_host_bounds: tuple[int, int, int]
  hbm_bytes: int  # memory of one device that a program may use
  num_devices: int

  @property
  def is_tpu(self) -> bool:
    return self.platform == "tpu"


def _tpu(name: str, shape: str, chip_config: str, hbm_gib: float) -> Topology:
  generation = name.split("-")[0]
  dims = [int(d) for d in shape.split("x")]
  chips = 1
  for d in dims:
    chips *= d
  return Topology(name, "tpu", f"{generation}:{shape}", chip_config, (2, 2, 1),
                  int(hbm_gib * GiB), chips)


# HBM per chip as XLA:TPU counts it ("exceeds available HBM (95.74G)"): v5p 95.74 GiB,
# v5e 15.75 GiB, v6e 31.25 GiB; 4 chips per host.
_V5P = {"v5p-8": "2x2x1", "v5p-16": "2x2x2", "v5p-32": "2x2x4", "v5p-64": "2x4x4",
        "v5p-128": "4x4x4"}
_LITE = {"8": "2x4", "16": "4x4", "32": "4x8", "64": "8x8", "128": "8x16", "256": "16x16"}

# The A800 80GB reports 81920 MiB; XLA may allocate 92% of it (launch/ sets the fraction).
A800_BYTES = 80 * GiB
A800_FRACTION = 0.92

TOPOLOGIES: dict[str, Topology] = {
    **{name: _tpu(name, shape, "megacore", 95.74) for name, shape in _V5P.items()},
    **{f"v5e-{n}": _tpu(f"v5e-{n}", shape, "default", 15.75) for n, shape in _LITE.items()},
    **{f"v6e-{n}": _tpu(f"v6e-{n}", shape, "default", 31.25) for n, shape in _LITE.items()},
    **{f"cpu-{n}": Topology(f"cpu-{n}", "cpu", str(n), "", (1, 1, 1),
                            int(A800_BYTES * A800_FRACTION), n) for n in (1, 2, 4, 8)},
}


def get(name: str) -> Topology:
  """The named topology; a ValueError listing the known names otherwise."""
  if name not in TOPOLOGIES:
    raise ValueError(f"unknown topology {name!r}; known: {', '.join(TOPOLOGIES)}")
  return TOPOLOGIES[name]
