"""The trajectory table: round trips through Parquet and Arrow IPC, and the version guard."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfplay import schema
from selfplay.schema import SchemaError
from tests.rows import make_row


def two_rows() -> list[dict]:
    return [
        make_row(traj_id="a", turn=0, role=0, policy_version=3, ret=1.0),
        make_row(
            traj_id="a",
            turn=1,
            role=1,
            policy_version=3,
            ret=-1.0,
            outcome=-1.0,
            prompt_ids=[7, 8],
            response_ids=[9, 10],
            behaviour_logprobs=[-0.25, -2.0],
            illegal=True,
            trainable=False,
            response_text="x",
        ),
    ]


def test_from_rows_has_the_schema_and_its_version():
    table = schema.from_rows(two_rows())
    assert table.schema.equals(schema.SCHEMA, check_metadata=True)
    assert table.schema.metadata[schema.VERSION_KEY] == b"4"
    assert table.column_names == schema.COLUMNS


def test_parquet_round_trip_keeps_rows(tmp_path):
    rows = two_rows()
    path = tmp_path / "t.parquet"
    schema.write_parquet(schema.from_rows(rows), path)
    back = schema.read_parquet(path)
    assert back.equals(schema.from_rows(rows))
    assert back.to_pylist() == rows
    assert not (tmp_path / "t.parquet.tmp").exists()


def test_ipc_round_trip_keeps_rows():
    rows = two_rows()
    back = schema.from_ipc(schema.to_ipc(schema.from_rows(rows)))
    assert back.to_pylist() == rows
    assert back.schema.metadata[schema.VERSION_KEY] == b"4"


def test_empty_table_round_trips_through_ipc():
    back = schema.from_ipc(schema.to_ipc(schema.empty()))
    assert back.num_rows == 0
    assert back.column_names == schema.COLUMNS


def test_other_schema_version_in_parquet_is_refused(tmp_path):
    table = schema.from_rows(two_rows())
    meta = dict(table.schema.metadata)
    meta[schema.VERSION_KEY] = b"99"
    path = tmp_path / "future.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(SchemaError, match="version 99") as err:
        schema.read_parquet(path)
    assert str(path) in str(err.value)


def test_table_without_metadata_is_refused():
    table = schema.from_rows(two_rows()).replace_schema_metadata(None)
    with pytest.raises(SchemaError, match="selfplay.schema_version"):
        schema.check(table)


def test_ipc_message_without_metadata_is_refused():
    table = schema.from_rows(two_rows()).replace_schema_metadata(None)
    with pytest.raises(SchemaError, match="ipc message"):
        schema.from_ipc(schema.to_ipc(table))


def test_missing_column_is_refused_and_named():
    table = schema.from_rows(two_rows())
    table = table.drop_columns(["reward"]).replace_schema_metadata(table.schema.metadata)
    with pytest.raises(SchemaError, match="reward"):
        schema.check(table)


@pytest.mark.parametrize(
    "column, values, message",
    [
        ("turn", pa.array(["x", "y"]), r"column turn is string, expected int32"),
        (
            "prompt_ids",
            pa.array([[2**40], [1]]),
            r"column prompt_ids is list<.*int64>, expected list<item: int32> \(Integer value 1099511627776 not in range",
        ),
        ("scores", pa.array([{"a": 1.0}, {"a": 2.0}]), r"column scores is struct<a: double>, expected map"),
    ],
)
def test_a_column_of_another_type_is_refused_by_file_and_column(tmp_path, column, values, message):
    """A Parquet file whose column cannot be cast: the error names the file and the column
    (Arrow's named neither, and was not a SchemaError)."""
    table = schema.from_rows(two_rows())
    bad = table.set_column(table.schema.get_field_index(column), column, values)
    path = tmp_path / "bad.parquet"
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(SchemaError, match=rf"{path}: {message}"):
        schema.read_parquet(path)


def test_bytes_that_are_not_an_arrow_stream_are_refused_by_name():
    with pytest.raises(SchemaError, match="ipc message: not an Arrow stream"):
        schema.from_ipc(b"garbage bytes, not arrow")


def test_check_reorders_columns_to_the_schema():
    table = schema.from_rows(two_rows())
    shuffled = table.select(list(reversed(schema.COLUMNS))).replace_schema_metadata(table.schema.metadata)
    assert schema.check(shuffled).column_names == schema.COLUMNS


def test_write_parquet_refuses_a_table_that_is_not_a_trajectory_table(tmp_path):
    with pytest.raises(SchemaError):
        schema.write_parquet(pa.table({"x": [1]}), tmp_path / "bad.parquet")
    assert list(tmp_path.iterdir()) == []


def test_a_version_1_file_written_before_the_task_columns_is_refused_by_name(tmp_path):
    v1 = [
        f
        for f in schema.FIELDS
        if f.name
        not in (
            "task",
            "group_id",
            "reference_id",
            "scores",
            "label",
            "advantage",
            "rejected_ids",
            "rejected_text",
            "allowed_ids",
        )
    ]
    table = pa.Table.from_pylist(two_rows(), schema=pa.schema(v1, metadata={schema.VERSION_KEY: b"1"}))
    path = tmp_path / "old.parquet"
    pq.write_table(table, path)
    with pytest.raises(SchemaError, match="trajectory schema version 1, this selfplay reads version 4"):
        schema.read_parquet(path)


def test_a_version_2_file_written_before_preference_pairs_reads_with_those_columns_null(tmp_path):
    v2 = [f for f in schema.FIELDS if f.name not in ("rejected_ids", "rejected_text", "allowed_ids")]
    table = pa.Table.from_pylist(two_rows(), schema=pa.schema(v2, metadata={schema.VERSION_KEY: b"2"}))
    path = tmp_path / "v2.parquet"
    pq.write_table(table, path)
    back = schema.read_parquet(path)
    assert back.schema.equals(schema.SCHEMA, check_metadata=True)
    assert back["rejected_ids"].to_pylist() == back["allowed_ids"].to_pylist() == [None, None]
    assert back["traj_id"].to_pylist() == table["traj_id"].to_pylist()
    # only the columns versions 3 and 4 added are filled: a version-2 table short of its own is refused
    short = table.drop_columns(["reward"])
    with pytest.raises(SchemaError, match=r"missing columns \['reward'\]"):
        schema.check(short)


def test_a_preference_pair_round_trips_through_parquet(tmp_path):
    row = make_row(label="dpo", response_ids=[5, 6], rejected_ids=[7], rejected_text="x")
    path = tmp_path / "pair.parquet"
    schema.write_parquet(schema.from_rows([row]), path)
    back = schema.read_parquet(path).to_pylist()[0]
    assert (back["response_ids"], back["rejected_ids"], back["rejected_text"]) == ([5, 6], [7], "x")


def test_a_version_3_file_written_before_legal_move_masking_reads_with_allowed_ids_null(tmp_path):
    v3 = [f for f in schema.FIELDS if f.name != "allowed_ids"]
    table = pa.Table.from_pylist(two_rows(), schema=pa.schema(v3, metadata={schema.VERSION_KEY: b"3"}))
    path = tmp_path / "v3.parquet"
    pq.write_table(table, path)
    back = schema.read_parquet(path)
    assert back.schema.equals(schema.SCHEMA, check_metadata=True)
    assert back["allowed_ids"].to_pylist() == [None, None]


def test_allowed_ids_round_trip(tmp_path):
    path = tmp_path / "masked.parquet"
    schema.write_parquet(schema.from_rows([make_row(allowed_ids=[11, 12, 15])]), path)
    assert schema.read_parquet(path)["allowed_ids"].to_pylist() == [[11, 12, 15]]


def test_a_task_rows_score_parts_round_trip_as_a_map(tmp_path):
    row = make_row(
        task="arithmetic",
        group_id="g",
        reference_id="arithmetic:1+2",
        scores={"correct": 1.0, "format": 1.0},
        label="sft",
    )
    schema.write_parquet(schema.from_rows([row]), tmp_path / "t.parquet")
    (back,) = schema.read_parquet(tmp_path / "t.parquet").to_pylist()
    assert dict(back["scores"]) == {"correct": 1.0, "format": 1.0} and back["label"] == "sft"
