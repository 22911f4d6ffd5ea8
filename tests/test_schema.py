import pyarrow as pa
import pytest

from logoscan.schema import SchemaError, validate_manifest, validate_references


def test_manifest_missing_column_names_file_and_column():
    t = pa.table({"item_id": ["a"]})
    with pytest.raises(SchemaError, match=r"m\.parquet.*missing required column.*image_uri"):
        validate_manifest(t, "m.parquet")


def test_manifest_wrong_type_names_column_and_expected_type():
    t = pa.table({"item_id": [1, 2], "image_uri": ["a", "b"]})
    with pytest.raises(SchemaError, match=r"m\.parquet: column 'item_id' has type int64, expected string"):
        validate_manifest(t, "m.parquet")


def test_manifest_image_id_defaults_to_uri_and_large_strings_are_accepted():
    t = pa.table({"item_id": pa.array(["a", "b"], pa.large_string()), "image_uri": ["x.jpg", "y.jpg"],
                  "image_id": ["i1", None]})
    out = validate_manifest(t, "m")
    assert out.column("image_id").to_pylist() == ["i1", "y.jpg"]
    assert out.schema.field("item_id").type == pa.string()


def test_references_need_unique_logo_ids_and_no_nulls():
    base = {"logo_id": ["a", "a"], "label": ["x", "y"], "category": ["c", "c"], "image_uri": ["1", "2"]}
    with pytest.raises(SchemaError, match="logo_id.*unique.*'a'"):
        validate_references(pa.table(base), "r")
    with pytest.raises(SchemaError, match="'label' has 1 null"):
        validate_references(pa.table({**base, "logo_id": ["a", "b"], "label": ["x", None]}), "r")
