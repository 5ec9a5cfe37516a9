from bench.world.contexts import parse_prompt
from bench.world.dataset import load_png, pairs, write_subject_folders
from bench.world.metrics import context_alignment
from bench.world.subjects import split_subjects


def test_pairs_are_deterministic_and_never_repeat_the_reference_context_as_target():
    train, _ = split_subjects()
    drawn = list(pairs(train, n=1000, seed=1))
    assert len(drawn) == 1000
    assert drawn == list(pairs(train, n=1000, seed=1))
    assert drawn != list(pairs(train, n=1000, seed=2))
    assert all(reference != target for _, reference, target in drawn)
    assert {subject for subject, _, _ in drawn} <= set(train)


def test_subject_folders_hold_pngs_with_class_level_captions_that_describe_them(tmp_path):
    _, held_out = split_subjects()
    subjects = held_out[:2]
    written = write_subject_folders(tmp_path, subjects, images_per_subject=3, seed=0)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(
        f"subject_{s.id}/{k}.png" for s in subjects for k in range(3))
    for path in written:
        caption = path.with_suffix(".txt").read_text().strip()
        assert caption.startswith("a toy on a ")
        assert context_alignment(load_png(path), parse_prompt(caption))["all"], path
