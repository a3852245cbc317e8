"""The per-sample results file and paired comparisons of two runs (callbacks/per_sample.py,
callbacks/compare.py, ``medrobust compare``)."""

from __future__ import annotations

import numpy as np
import pytest

from callbacks.compare import compare_runs, compare_tables, format_comparison
from callbacks.per_sample import FILE_NAME, SampleTable, column_name


def _table(seed: int, shift: float = 0.0, ids: np.ndarray | None = None) -> SampleTable:
    rng = np.random.default_rng(seed)
    ids = np.arange(60) if ids is None else ids
    n = len(ids)
    t = SampleTable(ids)
    t.add(column_name("clean", "accuracy"), (rng.random(n) < 0.9).astype(float))
    t.add(column_name("pgd", "accuracy", 0.004), (rng.random(n) < 0.6 + shift).astype(float))
    t.add(column_name("worst", "dice", 0.004), np.clip(rng.beta(5, 2, n) + shift, 0, 1))
    return t


def test_column_names_and_round_trip(tmp_path) -> None:
    assert column_name("pgd", "accuracy", 0.004) == "pgd/0.004/accuracy"
    assert column_name("clean", "dice") == "clean/dice"
    with pytest.raises(ValueError, match="may not contain"):
        column_name("a/b", "dice")
    t = _table(0)
    t.columns["worst/0.004/dice"][3] = float("nan")
    path = t.save(tmp_path / FILE_NAME)
    back = SampleTable.load(path)
    assert back.columns.keys() == t.columns.keys()
    np.testing.assert_array_equal(back.sample_ids, t.sample_ids)
    for k in t.columns:
        np.testing.assert_allclose(back.columns[k], t.columns[k].astype(np.float32), rtol=1e-7, equal_nan=True)
    assert path.read_text().splitlines()[0].startswith("# medrobust per-sample results, format 1")


def test_same_values_give_a_byte_identical_file_whatever_the_row_order(tmp_path) -> None:
    a = _table(1)
    perm = np.random.default_rng(0).permutation(60)
    b = SampleTable(a.sample_ids[perm], {k: v[perm] for k, v in a.columns.items()})
    assert a.to_csv() == b.to_csv()


def test_bad_tables_and_files_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="unique; repeated: \\[2\\]"):
        SampleTable(np.array([1, 2, 2]))
    t = SampleTable(np.arange(3))
    with pytest.raises(ValueError, match="2 values for 3 samples"):
        t.add("clean/accuracy", [1.0, 0.0])
    t.add("clean/accuracy", [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="already in the table"):
        t.add("clean/accuracy", [1.0, 0.0, 1.0])
    bad = tmp_path / "x.csv"
    bad.write_text("sample_id,clean/accuracy\n1,1\n")
    with pytest.raises(ValueError, match="not a medrobust per-sample file"):
        SampleTable.load(bad)
    bad.write_text("# medrobust per-sample results, format 1\nsample_id,clean/accuracy\n1,1\n2\n")
    with pytest.raises(ValueError, match="line 4: 1 cells for 2 columns"):
        SampleTable.load(bad)


def test_compare_pairs_on_shared_sample_ids_and_detects_a_difference() -> None:
    a = _table(2, shift=0.25)
    b = _table(3, ids=np.arange(10, 70))  # 50 samples shared
    rows = compare_tables(a, b, seed=0)
    by = {r.column: r for r in rows}
    assert all(r.n == 50 for r in rows)
    assert by["worst/0.004/dice"].verdict == "A > B"
    assert by["pgd/0.004/accuracy"].p_value is not None
    assert by["worst/0.004/dice"].p_value is None
    text = format_comparison(rows)
    assert "| worst/0.004/dice | 50 |" in text and "A − B [95% CI]" in text


def test_compare_identical_runs_shows_no_difference() -> None:
    a = _table(4)
    rows = compare_tables(a, a)
    for r in rows:
        assert r.difference.estimate == 0.0 and r.verdict == "inconclusive"
        if r.p_value is not None:
            assert r.p_value == 1.0


def test_compare_errors_say_what_is_wrong() -> None:
    a, b = _table(5), _table(6, ids=np.arange(100, 160))
    with pytest.raises(ValueError, match="share no evaluated sample id"):
        compare_tables(a, b)
    with pytest.raises(ValueError, match="not in both runs"):
        compare_tables(a, _table(7), columns=["fgsm/0.1/accuracy"])


def test_medrobust_compare_command(tmp_path, capsys) -> None:
    from medrobust.cli import main

    for name, seed, shift in (("a", 8, 0.25), ("b", 9, 0.0)):
        (tmp_path / name).mkdir()
        _table(seed, shift).save(tmp_path / name / FILE_NAME)
    with pytest.raises(SystemExit) as done:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--column", "worst/0.004/dice"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "| worst/0.004/dice | 60 |" in out and "A > B" in out
    rows = compare_runs(tmp_path / "a", tmp_path / "b" / FILE_NAME)
    assert len(rows) == 3
    with pytest.raises(SystemExit) as failed:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "missing")])
    assert failed.value.code == 2
    assert "no per-sample results" in capsys.readouterr().err


def test_sparse_discordant_pairs_stay_inconclusive_unless_mcnemar_agrees() -> None:
    """3 of 200 pairs discordant, all one way: the bootstrap interval excludes 0 but McNemar's
    exact p is 0.25, so the verdict is inconclusive; 12 of 200 all one way (p < 0.001): A > B."""
    for k, verdict in ((3, "inconclusive"), (12, "A > B")):
        a, b = np.ones(200), np.ones(200)
        b[:k] = 0.0
        row = compare_tables(SampleTable(np.arange(200), {"worst/0.01/accuracy": a}),
                             SampleTable(np.arange(200), {"worst/0.01/accuracy": b}))[0]
        assert row.verdict == verdict, (k, row.difference, row.p_value)
        assert row.difference.low > 0  # the bootstrap alone would call both
    assert row.p_value < 0.001
