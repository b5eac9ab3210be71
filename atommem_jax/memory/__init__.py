"""Long-term memory of the AtomMem agent: a CRUD vector store and text embedders."""

from atommem_jax.memory.embed import Embedder
from atommem_jax.memory.embed import HashingEmbedder
from atommem_jax.memory.embed import SentenceTransformerEmbedder
from atommem_jax.memory.embed import make_embedder
from atommem_jax.memory.embed import minilm_embedder
from atommem_jax.memory.embed import qwen3_embedding_embedder
from atommem_jax.memory.store import MemoryEntry
from atommem_jax.memory.store import MemoryStore
from atommem_jax.memory.store import Retrieved
from atommem_jax.memory.store import StoreFullError
