"""Host-side agent pieces. Re-exported here: the action grammar and the reward (light imports).

The episode environment (agent.env), prompts, chunking, stats and the teacher policies
(agent.oracle) pull in the memory store and embedders: import those modules directly.
"""

from atommem_jax.agent.actions import Action
from atommem_jax.agent.actions import ActionKind
from atommem_jax.agent.actions import ALL_KINDS
from atommem_jax.agent.actions import parse_response
from atommem_jax.agent.actions import ParsedResponse
from atommem_jax.agent.actions import PROBLEM_KINDS
from atommem_jax.agent.actions import Problem
from atommem_jax.agent.actions import render_actions
from atommem_jax.agent.reward import context_reward
from atommem_jax.agent.reward import exact_match
from atommem_jax.agent.reward import extract_boxed
from atommem_jax.agent.reward import f1_score
from atommem_jax.agent.reward import normalize_answer
from atommem_jax.agent.reward import store_size_penalty
