import pandas as pd
import pytest

from stages._io import DataError, atomic_path, read_pairs, write_pairs


def test_roundtrip_and_defaults(tmp_path, pairs):
    path = tmp_path / "pairs.parquet"
    write_pairs(pairs, path)
    back = read_pairs(path)
    assert list(back["label"]) == list(pairs["label"])
    assert set(back["source"]) == {"gold"} and (back["weight"] == 1.0).all()


def test_jsonl_and_glue_tsv_with_label_names(tmp_path):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"premise": "A", "hypothesis": "B", "label": "contradiction"}\n')
    assert read_pairs(jsonl)["label"].tolist() == [2]
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("index\tsentence1\tsentence2\tgold_label\n0\tA man.\tA person.\tentailment\n")
    df = read_pairs(tsv)
    assert df.loc[0, "premise"] == "A man." and df.loc[0, "label"] == 0


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"premise": ["a"], "label": [0]}).to_parquet(path)
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert "bad.parquet" in str(err.value) and "hypothesis" in str(err.value)


def test_unknown_label_names_file_and_row(tmp_path, pairs):
    pairs.loc[7, "label"] = 5
    path = tmp_path / "labels.parquet"
    pairs.to_parquet(path)
    with pytest.raises(DataError, match=r"labels.parquet: row 7: unknown label 5"):
        read_pairs(path)


def test_unlabelled_rows_need_permission(tmp_path, pairs):
    pairs["label"] = -1
    path = tmp_path / "pool.parquet"
    pairs.to_parquet(path)
    with pytest.raises(DataError, match="row 0"):
        read_pairs(path)
    assert (read_pairs(path, allow_unlabelled=True)["label"] == -1).all()


def test_empty_split_is_an_error(tmp_path):
    path = tmp_path / "empty.parquet"
    pd.DataFrame({"premise": [], "hypothesis": [], "label": []}).to_parquet(path)
    with pytest.raises(DataError, match="empty.parquet: no rows"):
        read_pairs(path)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]
