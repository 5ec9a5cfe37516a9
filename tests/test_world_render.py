from dataclasses import replace

import numpy as np
import pytest

from bench.world.contexts import Context, lit_background
from bench.world.foreground import erode, foreground_mask
from bench.world.render import render, render_mask
from bench.world.subjects import all_subjects, subject_by_id, with_attributes

SUBJECT = subject_by_id(23)
CONTEXT = Context("blue", "left", "large", "bright")


@pytest.mark.parametrize("size", [64, 96])
def test_render_returns_a_float32_image_in_the_unit_range_at_the_requested_size(size):
    image = render(SUBJECT, CONTEXT, size=size)
    assert image.shape == (size, size, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_the_same_inputs_render_identical_arrays():
    assert np.array_equal(render(SUBJECT, CONTEXT), render(SUBJECT, CONTEXT))


def _jittered(seed):
    """The test toy rendered with jitter drawn from a fresh generator."""
    return render(SUBJECT, CONTEXT, rng=np.random.default_rng(seed))


def test_jitter_is_reproducible_for_a_seed_and_differs_across_seeds():
    assert np.array_equal(_jittered(7), _jittered(7))
    assert not np.array_equal(_jittered(7), _jittered(8))
    assert not np.array_equal(_jittered(7), render(SUBJECT, CONTEXT))


@pytest.mark.parametrize("attribute", ["body", "second"])
def test_changing_one_subject_attribute_changes_the_image(attribute):
    value = {"body": "blue", "second": "white"}[attribute]
    assert getattr(SUBJECT, attribute) != value
    other = with_attributes(SUBJECT, **{attribute: value})
    assert np.abs(render(other, CONTEXT) - render(SUBJECT, CONTEXT)).max() > 0.3


@pytest.mark.parametrize("change", [{"background": "pink"}, {"position": "right"}, {"size": "small"},
                                    {"lighting": "dim"}])
def test_changing_one_context_attribute_changes_the_image(change):
    assert np.abs(render(SUBJECT, replace(CONTEXT, **change)) - render(SUBJECT, CONTEXT)).max() > 0.3


def test_the_mask_covers_exactly_the_pixels_that_differ_from_the_background():
    image, mask = render(SUBJECT, CONTEXT), render_mask(SUBJECT, CONTEXT)
    off_background = np.linalg.norm(image - lit_background(CONTEXT), axis=2) > 0.05
    assert mask.sum() > 0.1 * mask.size
    assert not off_background[erode(~mask, 1)].any()  # only partly covered edge pixels lie outside the mask
    assert off_background[mask].all()


def test_a_toy_on_a_background_of_similar_colour_is_still_found_by_its_outline():
    yellow_on_yellow = next(s for s in all_subjects() if s.body == "yellow" and s.second == "white")
    for lighting in ("bright", "dim"):
        context = Context("yellow", "center", "small", lighting)
        found, truth = foreground_mask(render(yellow_on_yellow, context)), render_mask(yellow_on_yellow, context)
        assert (found & truth).sum() / (found | truth).sum() > 0.9
