"""Qwen3 dense model: config presets, Flax modules, pure forward/cache API, sharding."""

from atommem_jax.model.config import PRESETS
from atommem_jax.model.config import Qwen3Config
from atommem_jax.model.config import preset
from atommem_jax.model.qwen3 import Qwen3
from atommem_jax.model.qwen3 import cache_logical_axes
from atommem_jax.model.qwen3 import forward
from atommem_jax.model.qwen3 import init_cache
from atommem_jax.model.qwen3 import init_params
from atommem_jax.model.qwen3 import logits
from atommem_jax.model.qwen3 import param_logical_axes
from atommem_jax.model.qwen3 import param_shardings
from atommem_jax.model.qwen3 import positions_from_mask
from atommem_jax.model.qwen3 import sharded_forward_fn
from atommem_jax.model.sharding import DEFAULT_RULES
from atommem_jax.model.sharding import MESH_AXES
from atommem_jax.model.sharding import ActivationSharding
from atommem_jax.model.sharding import logical_to_sharding
from atommem_jax.model.sharding import logical_to_spec
from atommem_jax.model.sharding import make_mesh
