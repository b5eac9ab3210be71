"""Action grammar: totality under fuzzing, round trips, and every problem kind."""

from __future__ import annotations

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from atommem_jax.agent import actions as actions_lib
from atommem_jax.agent.actions import Action
from atommem_jax.agent.actions import ActionKind
from atommem_jax.agent.actions import parse_response
from atommem_jax.agent.actions import render_actions

K = ActionKind
_TAG_NAMES = [kind.value for kind in ActionKind]
_FRAGMENTS = st.sampled_from(
    [f"<{name}>" for name in _TAG_NAMES] + [f"</{name}>" for name in _TAG_NAMES]
    + ["<ADD_MEMORY>", "</Update_Query>", "<think>", "</think>", "<THINK>", "<foo>", "</b>",
       "Memory 1:", "Memory 2", "memory 3: ", "Memory 0", "Memory -1",
       "Memory 99999999999999999999999",
       "Memory\n4 :", "Memory x", "\\boxed{", "\\boxed{ans}", "{", "}", "\\", "\\}", "<", ">",
       "/", " ", "\n", "text", "Zarko lives in Belo.", "\u00e9\u4e2d", ":", "<<add_memory>>"])
_FRAGMENT_TEXT = st.lists(_FRAGMENTS, max_size=30).map("".join)


def _check_invariants(parsed, num_retrieved, max_content_chars, allowed):
  single_counts = {kind: 0 for kind in actions_lib.SINGLE_KINDS}
  edited = set()
  for action in parsed.actions:
    assert action.kind in allowed
    if action.kind in single_counts:
      single_counts[action.kind] += 1
    if action.kind in (K.UPDATE, K.DELETE):
      assert 1 <= action.memory_index <= num_retrieved
      assert action.memory_index not in edited
      edited.add(action.memory_index)
    else:
      assert action.memory_index is None
    assert action.text == action.text.strip()
    if action.kind is not K.ANSWER:  # an answer is never dropped for its content
      assert len(action.text) <= max_content_chars
      assert (action.text == "") == (action.kind is K.DELETE)
  assert all(count <= 1 for count in single_counts.values())
  assert all(problem.kind in actions_lib.PROBLEM_KINDS for problem in parsed.problems)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), _FRAGMENT_TEXT), st.integers(-2, 8),
       st.integers(0, 50), st.sets(st.sampled_from(list(ActionKind))))
def test_parse_is_total_and_outputs_are_valid(text, num_retrieved, max_chars, allowed):
  allowed = frozenset(allowed)
  parsed = parse_response(text, num_retrieved=num_retrieved, max_content_chars=max_chars,
                          allowed=allowed)
  _check_invariants(parsed, num_retrieved, max_chars, allowed)


_WORDS = st.text(st.characters(codec="utf-8", exclude_characters="<>{}\\\x00",
                               exclude_categories=("Cs",)), min_size=1, max_size=40)
_CONTENT = _WORDS.map(str.strip).filter(bool)


@st.composite
def _valid_actions(draw):
  num_retrieved = draw(st.integers(0, 6))
  pool = [Action(K.CREATE, text) for text in draw(st.lists(_CONTENT, max_size=3))]
  for kind in (K.SCRATCHPAD, K.READ, K.ANSWER):
    if draw(st.booleans()):
      pool.append(Action(kind, draw(_CONTENT)))
  indices = draw(st.permutations(range(1, num_retrieved + 1)))
  for index in indices[:draw(st.integers(0, num_retrieved))]:
    if draw(st.booleans()):
      pool.append(Action(K.UPDATE, draw(_CONTENT), index))
    else:
      pool.append(Action(K.DELETE, "", index))
  return tuple(draw(st.permutations(pool))), num_retrieved


@settings(max_examples=200, deadline=None)
@given(_valid_actions(), st.sampled_from(["\n", "\n\n", " Some reasoning text. "]))
def test_render_then_parse_round_trips(valid, separator):
  actions, num_retrieved = valid
  text = render_actions(actions)
  parsed = parse_response(text, num_retrieved=num_retrieved, max_content_chars=10_000)
  assert parsed.actions == actions
  assert parsed.problems == ()
  # Free text between actions changes nothing.
  spaced = separator.join(render_actions([a]) for a in actions)
  assert parse_response(spaced, num_retrieved=num_retrieved).actions == actions


@settings(max_examples=100, deadline=None)
@given(_valid_actions())
def test_boxed_space_changes_only_the_answer_text_and_round_trips(valid):
  actions, num_retrieved = valid
  spaced = render_actions(actions, boxed_space=True)
  assert spaced == render_actions(actions).replace("\\boxed{", "\\boxed{ ")
  parsed = parse_response(spaced, num_retrieved=num_retrieved, max_content_chars=10_000)
  assert parsed.actions == actions and parsed.problems == ()


def test_boxed_space_form():
  assert (render_actions([Action(K.ANSWER, "Fasu")], boxed_space=True)
          == "<final_answer>\\boxed{ Fasu}</final_answer>")


def test_answer_with_nested_braces_round_trips():
  actions = (Action(K.ANSWER, r"\text{a {b}} c"),)
  parsed = parse_response(render_actions(actions), num_retrieved=0)
  assert parsed.actions == actions and parsed.problems == ()


@pytest.mark.parametrize("action", [
    Action(K.CREATE, "has <add_memory> inside"),
    Action(K.CREATE, "  padded  "),
    Action(K.CREATE, ""),
    Action(K.UPDATE, "text"),  # no memory_index
    Action(K.DELETE, "", 0),
    Action(K.ANSWER, "unbalanced {"),
    Action(K.SCRATCHPAD, "x", 3),
])
def test_render_refuses_actions_that_do_not_round_trip(action):
  with pytest.raises(ValueError, match="cannot render"):
    render_actions([action])


def _kinds(parsed):
  return [problem.kind for problem in parsed.problems]


@pytest.mark.parametrize("text,num_retrieved,problem", [
    ("<search>x</search>", 0, "unknown_tag"),
    ("<add_memory>never closed", 0, "unclosed_tag"),
    ("</add_memory> hi", 0, "stray_close_tag"),
    ("<add_memory>a <update_query>q</update_query> b</add_memory>", 0, "nested_tag"),
    ("<modify_memory>Memory two: x</modify_memory>", 3, "bad_memory_ref"),
    ("<modify_memory>new text only</modify_memory>", 3, "bad_memory_ref"),
    ("<delete_memory>the second one</delete_memory>", 3, "bad_memory_ref"),
    ("<delete_memory>Memory 4</delete_memory>", 3, "memory_index_out_of_range"),
    ("<add_memory>   </add_memory>", 0, "empty_content"),
    ("<modify_memory>Memory 1:  </modify_memory>", 3, "empty_content"),
    ("<final_answer>\\boxed{}</final_answer>", 0, "empty_content"),
    ("<add_memory>" + "x" * 4001 + "</add_memory>", 0, "oversized_content"),
    ("<final_answer>\\boxed{a}</final_answer><final_answer>\\boxed{b}</final_answer>", 0,
     "duplicate_single_action"),
    ("<delete_memory>Memory 1</delete_memory><modify_memory>Memory 1: x</modify_memory>", 2,
     "conflicting_memory_ref"),
    ("<final_answer>Paris</final_answer>", 0, "missing_boxed"),
])
def test_each_problem_kind_is_reported(text, num_retrieved, problem):
  parsed = parse_response(text, num_retrieved=num_retrieved, max_content_chars=4000)
  assert problem in _kinds(parsed)


def test_every_declared_problem_kind_is_exercised():
  assert set(actions_lib.PROBLEM_KINDS) == {
      "unknown_tag", "unclosed_tag", "stray_close_tag", "nested_tag", "disabled_action",
      "empty_content", "oversized_content", "bad_memory_ref", "memory_index_out_of_range",
      "conflicting_memory_ref", "duplicate_single_action", "missing_boxed"}


def test_dropped_and_kept_actions():
  # Scratchpad rewrites and Reads: all kept in order (applied one after another); the last
  # answer wins; memory edits: the first wins. An answer without \boxed{} is an empty one.
  parsed = parse_response(
      "<update_memory>old</update_memory><update_query>q1</update_query>"
      "<update_memory>new</update_memory><update_query>q2</update_query>"
      "<modify_memory>Memory 2: first</modify_memory><delete_memory>Memory 2</delete_memory>"
      "<final_answer>\\boxed{Rome}</final_answer><final_answer>Paris</final_answer>",
      num_retrieved=2)
  assert parsed.actions == (Action(K.SCRATCHPAD, "old"), Action(K.READ, "q1"),
                            Action(K.SCRATCHPAD, "new"), Action(K.READ, "q2"),
                            Action(K.UPDATE, "first", 2), Action(K.ANSWER, ""))
  assert _kinds(parsed) == ["missing_boxed", "conflicting_memory_ref",
                            "duplicate_single_action"]
  # Nested: container and contents dropped; unclosed: contents still count.
  parsed = parse_response("<add_memory>a <update_query>q</update_query> b</add_memory>",
                          num_retrieved=0)
  assert parsed.actions == ()
  parsed = parse_response("<add_memory>oops <update_query>q</update_query>", num_retrieved=0)
  assert parsed.actions == (Action(K.READ, "q"),)
  assert _kinds(parsed) == ["unclosed_tag"]
  # An unclosed tag does not swallow the next valid action of its kind.
  parsed = parse_response("<add_memory>a <add_memory>b</add_memory>", num_retrieved=0)
  assert parsed.actions == (Action(K.CREATE, "b"),)


@pytest.mark.parametrize("index", ["0", "7", "00", "123456789012345678901234567890"])
def test_out_of_range_memory_index_is_reported_and_dropped(index):
  for body in (f"<delete_memory>Memory {index}</delete_memory>",
               f"<modify_memory>Memory {index}: text</modify_memory>"):
    parsed = parse_response(body + "<add_memory>kept</add_memory>", num_retrieved=6)
    assert parsed.actions == (Action(K.CREATE, "kept"),)
    assert _kinds(parsed) == ["memory_index_out_of_range"]


def test_no_retrieval_shown_means_no_valid_reference():
  parsed = parse_response("<delete_memory>Memory 1</delete_memory>", num_retrieved=0)
  assert parsed.actions == () and _kinds(parsed) == ["memory_index_out_of_range"]


def test_think_content_is_ignored():
  inside = "<add_memory>draft</add_memory><final_answer>\\boxed{no}</final_answer><bogus>"
  parsed = parse_response(f"<think>{inside}</think>\n<add_memory>real</add_memory>",
                          num_retrieved=0)
  assert parsed.actions == (Action(K.CREATE, "real"),) and parsed.problems == ()
  # The chat template opened the block in the prompt: the response starts mid-reasoning.
  parsed = parse_response(f"{inside}</think><add_memory>real</add_memory>", num_retrieved=0)
  assert parsed.actions == (Action(K.CREATE, "real"),) and parsed.problems == ()
  # Reasoning cut off by the length limit: nothing after <think> counts.
  parsed = parse_response("<add_memory>a</add_memory><think>" + inside, num_retrieved=0)
  assert parsed.actions == (Action(K.CREATE, "a"),)
  assert _kinds(parsed) == ["unclosed_tag"]


def test_disabled_actions_are_dropped_and_reported():
  text = ("<add_memory>a</add_memory><modify_memory>Memory 1: b</modify_memory>"
          "<delete_memory>Memory 2</delete_memory>")
  parsed = parse_response(text, num_retrieved=2,
                          allowed=actions_lib.ALL_KINDS - {K.UPDATE})
  assert parsed.actions == (Action(K.CREATE, "a"), Action(K.DELETE, "", 2))
  assert _kinds(parsed) == ["disabled_action"]


def test_tags_and_memory_word_are_case_insensitive():
  parsed = parse_response("<ADD_MEMORY>x</Add_Memory><delete_memory>memory 3.</delete_memory>",
                          num_retrieved=3)
  assert parsed.actions == (Action(K.CREATE, "x"), Action(K.DELETE, "", 3))


def test_real_looking_atommem_response():
  response = """<think>
The chunk says Riccardo Cocchi now dances with Emily. Memory 1 is outdated, and Memory 2
duplicates Memory 6. I will write <add_memory> entries for the new facts.
</think>

<update_memory>
**1. Question 1**: Yulia Zagoruychenko's partner was Riccardo Cocchi until 2024.
**2. Question 2**: still unknown.
</update_memory>

<update_query>
dance partner; Yulia Zagoruychenko; 2025 season
</update_query>

<add_memory>
Document 10: the dance event took place in Moscow in October; Yulia participated.
</add_memory>
<add_memory>Document 12: Riccardo Cocchi is partnered with Emily in the 2025 season.</add_memory>

<modify_memory>Memory 1: Yulia's partner as of 2025 is unknown; re-verify.</modify_memory>
It can be observed that Entry 2 and Entry 6 are largely duplicated. Since Entry 6 is more
recent, I choose to delete Entry 2. <delete_memory>Memory 2</delete_memory>
"""
  parsed = parse_response(response, num_retrieved=6)
  assert parsed.problems == ()
  assert parsed.actions == (
      Action(K.SCRATCHPAD, "**1. Question 1**: Yulia Zagoruychenko's partner was Riccardo "
             "Cocchi until 2024.\n**2. Question 2**: still unknown."),
      Action(K.READ, "dance partner; Yulia Zagoruychenko; 2025 season"),
      Action(K.CREATE, "Document 10: the dance event took place in Moscow in October; "
             "Yulia participated."),
      Action(K.CREATE, "Document 12: Riccardo Cocchi is partnered with Emily in the 2025 "
             "season."),
      Action(K.UPDATE, "Yulia's partner as of 2025 is unknown; re-verify.", 1),
      Action(K.DELETE, "", 2),
  )
  final = parse_response("<final_answer>\\boxed{\\text{Riccardo Cocchi}}</final_answer>.",
                         num_retrieved=6)
  assert final.actions == (Action(K.ANSWER, "\\text{Riccardo Cocchi}"),)


def test_opening_tags_may_carry_attributes_and_long_contents_are_kept():
  """The reference parser's pattern is <(\\w+)[^>]*>(.*?)</\\1>: attributes in the opening
  tag are accepted; a closing tag is bare; no content length limit by default."""
  long_fact = "fact " * 2000
  parsed = parse_response(f'<add_memory id="3" kind=fact>{long_fact}</add_memory>'
                          "<update_query\n lang=en>q</update_query>"
                          "<final_answer style='short'>\\boxed{x}</final_answer>",
                          num_retrieved=0)
  assert parsed.actions == (Action(K.CREATE, long_fact.strip()), Action(K.READ, "q"),
                            Action(K.ANSWER, "x"))
  assert parsed.problems == ()
  # A closing tag with attributes closes nothing; a name that only starts like a tag name
  # is another tag.
  parsed = parse_response("<update_query>a</update_query x><add_memoryx>b</add_memory>",
                          num_retrieved=0)
  assert parsed.actions == ()
  assert _kinds(parsed) == ["stray_close_tag", "unclosed_tag"]
  parsed = parse_response("<add_memoryx>b</add_memory>", num_retrieved=0)
  assert parsed.actions == () and _kinds(parsed) == ["unknown_tag", "stray_close_tag"]
