from dataclasses import replace

import numpy as np
import pytest

from bench.world.contexts import Context, all_contexts, lit_background
from bench.world.foreground import erode
from bench.world.metrics import (context_alignment, diversity, identity_accuracy, recover_context, subject_distance,
                                 subject_fidelity)
from bench.world.render import render, render_mask
from bench.world.subjects import all_subjects, neighbours, subject_by_id, with_attributes

SUBJECT = subject_by_id(27)
CONTEXT = Context("green", "right", "small", "dim")


def _sample_subjects(n, seed=0):
    """n distinct subjects drawn without replacement."""
    ids = np.random.default_rng(seed).choice(len(all_subjects()), size=n, replace=False)
    return [subject_by_id(int(i)) for i in ids]


def test_an_exact_rendering_aligns_with_every_attribute_of_every_context():
    for subject in _sample_subjects(3):
        for context in all_contexts():
            assert context_alignment(render(subject, context), context)["all"], (subject, context)


@pytest.mark.parametrize("change", [{"background": "purple"}, {"position": "center"}, {"size": "large"},
                                    {"lighting": "bright"}])
def test_a_wrong_attribute_fails_alone_in_context_alignment(change):
    prompted = replace(CONTEXT, **change)
    result = context_alignment(render(SUBJECT, CONTEXT), prompted)
    attribute = next(iter(change))
    assert result == {"background": True, "position": True, "size": True, "lighting": True, "all": False} | {
        attribute: False}


def test_speckles_on_the_background_do_not_change_the_measured_size_or_position():
    image = render(SUBJECT, CONTEXT).copy()
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(2, 62, size=40), rng.integers(2, 20, size=40)  # far left, away from the right toy
    image[rows, cols] = 0.0
    assert context_alignment(image, CONTEXT)["all"]


def test_a_toy_filled_with_the_background_colour_is_measured_whole_from_its_outline():
    truth = render_mask(SUBJECT, CONTEXT)
    hollow = render(SUBJECT, CONTEXT).copy()
    hollow[erode(truth, 3)] = lit_background(CONTEXT)
    assert subject_fidelity(hollow, SUBJECT, CONTEXT)["iou"] == 1.0


def test_an_image_without_a_toy_has_a_background_but_no_size_or_position():
    empty = np.broadcast_to(lit_background(CONTEXT), (64, 64, 3))
    assert recover_context(empty) == {"background": "green", "position": None, "size": None, "lighting": "dim"}


def test_an_exact_rendering_has_fidelity_near_one_and_distance_zero():
    fidelity = subject_fidelity(render(SUBJECT, CONTEXT), SUBJECT, CONTEXT)
    assert fidelity["iou"] == 1.0 and fidelity["pattern_error"] == 0.0
    assert fidelity["colour_error"] < 0.02 and fidelity["fidelity"] > 0.98
    assert subject_distance(render(SUBJECT, CONTEXT), SUBJECT, CONTEXT) == 0.0


@pytest.mark.parametrize("other_id", [28, 40, 3])
def test_another_subject_has_lower_fidelity_and_larger_distance(other_id):
    other = subject_by_id(other_id)
    image = render(other, CONTEXT)
    wrong, right = subject_fidelity(image, SUBJECT, CONTEXT), subject_fidelity(image, other, CONTEXT)
    assert wrong["fidelity"] < right["fidelity"] - 0.1
    assert subject_distance(image, SUBJECT, CONTEXT) > subject_distance(image, other, CONTEXT) + 0.05


def test_swapped_colours_keep_the_colour_error_low_but_raise_the_pattern_error():
    swapped = with_attributes(SUBJECT, body=SUBJECT.second, second=SUBJECT.body)
    fidelity = subject_fidelity(render(swapped, CONTEXT), SUBJECT, CONTEXT)
    assert fidelity["iou"] == 1.0 and fidelity["colour_error"] < 0.05
    assert fidelity["pattern_error"] > 0.05


def test_a_toy_of_another_body_colour_has_the_same_shape_but_a_large_colour_error():
    recoloured = with_attributes(SUBJECT, body="blue")
    fidelity = subject_fidelity(render(recoloured, CONTEXT), SUBJECT, CONTEXT)
    assert fidelity["iou"] == 1.0 and fidelity["colour_error"] > 0.1


def test_fidelity_ignores_where_and_how_large_the_toy_was_drawn():
    moved = render(SUBJECT, Context("green", "left", "large", "dim"))
    fidelity = subject_fidelity(moved, SUBJECT, CONTEXT)
    assert fidelity["iou"] > 0.9 and fidelity["fidelity"] > 0.85


def test_identity_accuracy_is_perfect_on_exact_renderings_among_24_candidates():
    candidates = _sample_subjects(24)
    contexts = [all_contexts()[k * 3] for k in range(len(candidates))]
    images = [render(s, c) for s, c in zip(candidates, contexts)]
    assert identity_accuracy(images, candidates, candidates, contexts) == 1.0


def test_identity_accuracy_is_perfect_on_exact_renderings_among_one_attribute_neighbours():
    for subject, context in zip(_sample_subjects(4, seed=2), all_contexts()[::19]):
        candidates = [subject] + neighbours(subject)
        assert identity_accuracy([render(subject, context)], [subject], candidates, [context]) == 1.0


def test_identity_accuracy_is_zero_when_every_image_shows_another_candidate():
    candidates = _sample_subjects(24)
    shown = candidates[1:] + candidates[:1]
    contexts = [CONTEXT] * len(candidates)
    images = [render(s, CONTEXT) for s in shown]
    assert identity_accuracy(images, candidates, candidates, contexts) == 0.0


def test_identity_accuracy_asks_for_the_true_subject_among_the_candidates():
    candidates = _sample_subjects(5, seed=3)
    assert SUBJECT not in candidates
    with pytest.raises(ValueError, match="not among the candidates"):
        identity_accuracy([render(SUBJECT, CONTEXT)], [SUBJECT], candidates, [CONTEXT])


def test_diversity_is_zero_for_identical_images_and_positive_for_different_ones():
    image = render(SUBJECT, CONTEXT)
    assert diversity([image, image.copy(), image.copy()]) == 0.0
    jittered = [render(SUBJECT, CONTEXT, rng=np.random.default_rng(seed)) for seed in range(3)]
    assert diversity(jittered) > 0.0
    assert diversity([image, render(subject_by_id(28), CONTEXT)]) > 0.01
