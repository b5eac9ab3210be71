"""Data: multi-hop QA benchmarks as long contexts, and a synthetic multi-hop task."""

from atommem_jax.data.multihop import build_long_contexts
from atommem_jax.data.multihop import DataError
from atommem_jax.data.multihop import Document
from atommem_jax.data.multihop import Evidence
from atommem_jax.data.multihop import Fact
from atommem_jax.data.multihop import iter_long_contexts
from atommem_jax.data.multihop import load_long_contexts
from atommem_jax.data.multihop import LongContext
from atommem_jax.data.multihop import QASample
from atommem_jax.data.multihop import Question
from atommem_jax.data.multihop import read_2wiki
from atommem_jax.data.multihop import read_dataset
from atommem_jax.data.multihop import read_hotpotqa
from atommem_jax.data.multihop import read_musique
from atommem_jax.data.multihop import render_context
from atommem_jax.data.multihop import save_long_contexts
from atommem_jax.data.multihop import Supersession
from atommem_jax.data.synthetic import generate_synthetic
