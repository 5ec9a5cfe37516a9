import numpy as np
import pytest

from bench.world.contexts import Context, all_contexts, parse_prompt, prompt, random_context
from bench.world.render import render_mask
from bench.world.subjects import all_subjects


def test_the_prompt_reads_as_a_class_level_caption():
    context = Context(background="blue", position="left", size="small", lighting="dim")
    assert prompt(context) == "a toy on a blue background, at the left, small, dim light"


def test_every_context_round_trips_through_its_prompt():
    contexts = all_contexts()
    assert len(set(contexts)) == len(contexts) >= 72
    assert [parse_prompt(prompt(c)) for c in contexts] == contexts


def test_parse_prompt_accepts_a_personalized_subject_word():
    context = Context("grey", "center", "large", "bright")
    assert parse_prompt(prompt(context, subject_word="sks toy")) == context


@pytest.mark.parametrize("text", ["a toy on a teal background, at the left, small, dim light", "a toy at the beach"])
def test_parse_prompt_rejects_text_outside_the_world(text):
    with pytest.raises(ValueError):
        parse_prompt(text)


def test_random_context_is_deterministic_for_a_seed_and_covers_every_attribute():
    first, second = np.random.default_rng(3), np.random.default_rng(3)
    assert [random_context(first) for _ in range(20)] == [random_context(second) for _ in range(20)]
    rng = np.random.default_rng(0)
    drawn = {random_context(rng) for _ in range(400)}
    for name in ("background", "position", "size", "lighting"):
        assert {getattr(c, name) for c in drawn} == {getattr(c, name) for c in all_contexts()}


def test_a_small_toy_still_spans_at_least_40_percent_of_the_image_width():
    mask = render_mask(all_subjects()[0], Context("grey", "center", "small", "bright"), size=64)
    assert mask.any(axis=0).sum() >= 0.4 * 64
