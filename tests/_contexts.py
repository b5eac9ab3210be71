"""Small hand-made contexts and the real Qwen3 tokenizer, shared by the environment tests."""
import functools

from atommem_jax.data.multihop import Document
from atommem_jax.data.multihop import LongContext
from atommem_jax.data.multihop import Question
from atommem_jax.data.tokenizer import load_tokenizer


@functools.lru_cache(maxsize=None)
def tokenizer():
  return load_tokenizer()


def context(num_docs: int = 6, questions=(("What is the capital of Zorland?", "Paris"),),
            context_id: str = "ctx") -> LongContext:
  """num_docs filler places (document 0 is every question's gold) and the given questions."""
  documents = tuple(Document(f"Place {i}", f"Place {i} has {i + 2} bridges and one old tower.")
                    for i in range(num_docs))
  return LongContext(
      id=context_id, dataset="test",
      questions=tuple(Question(f"{context_id}-q{i}", q, (a,)) for i, (q, a) in
                      enumerate(questions)),
      documents=documents, gold_indices=tuple((0,) for _ in questions), seed=0,
      num_docs=num_docs)
