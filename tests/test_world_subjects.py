from dataclasses import astuple

import pytest

from bench.world.subjects import (Subject, all_subjects, describe, neighbours, split_subjects, subject_by_id,
                                  with_attributes)


def test_the_identity_space_holds_thousands_of_distinct_subjects_indexed_by_id():
    subjects = all_subjects()
    assert len(subjects) >= 1000
    assert [s.id for s in subjects] == list(range(len(subjects)))
    assert len({astuple(s)[1:] for s in subjects}) == len(subjects)
    assert all(s.body != s.second for s in subjects)


def test_a_subject_round_trips_through_a_dict():
    subject = subject_by_id(1234)
    assert Subject.from_dict(subject.to_dict()) == subject


def test_from_dict_rejects_an_id_that_names_another_subject():
    data = subject_by_id(10).to_dict() | {"id": 11}
    with pytest.raises(ValueError, match="subject id 11"):
        Subject.from_dict(data)


def test_the_split_is_disjoint_covering_and_deterministic():
    train, held_out = split_subjects(seed=0, held_out_fraction=0.1)
    assert set(train).isdisjoint(held_out)
    assert set(train) | set(held_out) == set(all_subjects())
    assert len(held_out) == round(0.1 * len(all_subjects()))
    assert split_subjects(seed=0, held_out_fraction=0.1) == (train, held_out)
    assert split_subjects(seed=1, held_out_fraction=0.1)[1] != held_out


def test_describe_names_every_attribute():
    subject = Subject.from_dict({"id": 0, "shape": "circle", "body": "red", "second": "orange",
                                 "pattern": "left_right", "aspect": "wide"})
    assert describe(subject) == "wide red circle with orange right half"


def test_with_attributes_changes_only_the_named_attributes():
    subject = subject_by_id(100)
    changed = with_attributes(subject, pattern="spot" if subject.pattern != "spot" else "band")
    assert changed.pattern != subject.pattern
    assert astuple(changed)[1:4] == astuple(subject)[1:4] and changed.aspect == subject.aspect
    with pytest.raises(ValueError, match="must differ"):
        with_attributes(subject, second=subject.body)


def test_every_subject_has_23_neighbours_that_differ_in_exactly_one_attribute():
    subject = subject_by_id(2000)
    found = neighbours(subject)
    assert len(found) == 5 + 6 + 6 + 4 + 2
    assert subject not in found
