from dataclasses import astuple

import pytest

from bench.world.subjects import (COLOURS, Subject, all_subjects, describe, neighbours, split_subjects, subject_by_id,
                                  with_attributes)


def test_the_identity_space_holds_every_ordered_pair_of_two_colours_indexed_by_id():
    subjects = all_subjects()
    assert len(subjects) == len(COLOURS) * (len(COLOURS) - 1)
    assert [s.id for s in subjects] == list(range(len(subjects)))
    assert len({astuple(s)[1:] for s in subjects}) == len(subjects)
    assert all(s.body != s.second for s in subjects)


def test_a_subject_round_trips_through_a_dict():
    subject = subject_by_id(34)
    assert Subject.from_dict(subject.to_dict()) == subject


def test_from_dict_rejects_an_id_that_names_another_subject():
    data = subject_by_id(10).to_dict() | {"id": 11}
    with pytest.raises(ValueError, match="subject id 11"):
        Subject.from_dict(data)


def test_the_split_is_disjoint_covering_and_deterministic():
    train, held_out = split_subjects(seed=0, held_out=24)
    assert set(train).isdisjoint(held_out)
    assert set(train) | set(held_out) == set(all_subjects())
    assert len(held_out) == 24
    assert split_subjects(seed=0, held_out=24) == (train, held_out)
    assert split_subjects(seed=1, held_out=24)[1] != held_out


@pytest.mark.parametrize("seed", range(5))
def test_every_colour_stays_in_training_both_as_body_and_as_second_colour(seed):
    train, _ = split_subjects(seed=seed)
    assert {s.body for s in train} == set(COLOURS) == {s.second for s in train}


def test_describe_names_the_body_colour_once_then_the_second_colour_repeated():
    subject = Subject.from_dict({"id": 0, "body": "red", "second": "orange"})
    assert describe(subject) == "red toy with right half orange orange orange orange"


def test_with_attributes_changes_only_the_named_attributes():
    subject = subject_by_id(10)
    changed = with_attributes(subject, second="white" if subject.second != "white" else "cyan")
    assert changed.second != subject.second and changed.body == subject.body
    with pytest.raises(ValueError, match="must differ"):
        with_attributes(subject, second=subject.body)


def test_every_subject_has_12_neighbours_that_differ_in_exactly_one_colour():
    subject = subject_by_id(20)
    found = neighbours(subject)
    assert len(found) == 6 + 6
    assert subject not in found
