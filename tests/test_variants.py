"""Method variants (ablations, oracle runs) and the ablation table."""

import pytest
from helpers.report import metrics_run

from pipeline.config import merge, resolve_method, variant_changes
from pipeline.report import method_sort_key
from pipeline.report.ablation import ablation_tables, markdown

METHODS = {
    "wilson": {"alpha": 0.5, "head_lr_mult": 10.0},
    "fmwiss": {"alpha": 0.5, "coseg": {"fusion": "union", "top_k": 0.7}},
    "fmwiss_none": {"method": "fmwiss", "coseg": {"fusion": "none"}},
    "fmwiss_bad": {"method": "fmwiss_none"},
}


def test_merge_is_recursive_and_does_not_touch_its_inputs():
    base = {"a": 1, "c": {"x": 1, "y": 2}}
    assert merge(base, {"c": {"y": 3}, "d": 4}) == {"a": 1, "c": {"x": 1, "y": 3}, "d": 4}
    assert base == {"a": 1, "c": {"x": 1, "y": 2}}


def test_resolve_method():
    assert resolve_method(METHODS, "wilson") == ("wilson", METHODS["wilson"])
    base, settings = resolve_method(METHODS, "fmwiss_none")
    assert base == "fmwiss"
    assert settings == {"alpha": 0.5, "coseg": {"fusion": "none", "top_k": 0.7}}
    with pytest.raises(KeyError, match="'nope' has no section"):
        resolve_method(METHODS, "nope")
    with pytest.raises(KeyError, match="itself a variant"):
        resolve_method(METHODS, "fmwiss_bad")
    assert variant_changes(METHODS, "fmwiss_none") == {"coseg.fusion": "none"}
    assert variant_changes(METHODS, "fmwiss") == {}


def test_variants_sort_after_their_method():
    order = sorted(["fmwiss_none", "wilson", "fmwiss", "ft", "zzz"], key=method_sort_key)
    assert order == ["ft", "wilson", "fmwiss", "fmwiss_none", "zzz"]


def _run(method, protocol, step, new, seed=0):
    return metrics_run(method, new, old=0.5, all_=0.45, seed=seed, protocol=protocol, step=step)


def test_ablation_table_has_a_column_per_changed_setting():
    runs = [
        _run("fmwiss", "overlap", 1, 0.30),
        _run("fmwiss_none", "overlap", 1, 0.20),
        _run("wilson", "overlap", 1, 0.10),
        _run("base", "overlap", 0, 0.0),
    ]
    variants = {"fmwiss_none": {"method": "fmwiss", "changes": {"coseg.fusion": "none"}}}
    (table,) = ablation_tables(runs, variants)
    assert table["header"] == ["Method", "coseg.fusion", "Overlap 1-15", "Overlap 16-20", "Overlap All"]
    assert table["rows"] == [
        ["FMWISS", "default", "50.0", "30.0", "45.0"],
        ["fmwiss_none", "none", "50.0", "20.0", "45.0"],
    ]
    assert markdown(table).count("\n") == 4
    assert ablation_tables(runs, {}) == []  # no variant: no ablation table


def test_ablation_table_writes_a_setting_set_to_null_as_null():
    runs = [_run("fmwiss", "overlap", 1, 0.30), _run("fmwiss_flat", "overlap", 1, 0.0)]
    variants = {"fmwiss_flat": {"method": "fmwiss", "changes": {"teacher_prior": None}}}
    (table,) = ablation_tables(runs, variants)
    assert [row[1] for row in table["rows"]] == ["default", "null"]
