"""The check evaluate and evaluate-instance run before evaluating: the model fits the split."""

import pytest

from pipeline.stages.common import split_classes_of_model

SPLIT = {"task": "15-5", "step": 1}


def test_a_fitting_model_gives_the_class_sets_of_its_split():
    task, step, table, seen, old, new = split_classes_of_model("m.pt", "s.json", SPLIT, {"task": "15-5", "step": 1}, 21)
    assert (task, step, table) == ("15-5", 1, "voc")
    assert seen == list(range(21)) and old == list(range(1, 16)) and new == [16, 17, 18, 19, 20]


@pytest.mark.parametrize("meta", [{"task": "10-10", "step": 1}, {"task": "15-5", "step": 0}, {}])
def test_a_model_of_another_task_or_step_is_refused_naming_both_files(meta):
    with pytest.raises(ValueError, match=r"m\.pt is a model of task .* but s\.json is task 15-5 step 1"):
        split_classes_of_model("m.pt", "s.json", SPLIT, meta, 21)


def test_a_model_with_other_outputs_is_refused_with_the_count_expected():
    with pytest.raises(ValueError, match=r"m\.pt: 16 outputs, expected 21 seen classes of 15-5 step 1"):
        split_classes_of_model("m.pt", "s.json", SPLIT, {"task": "15-5", "step": 1}, 16)
