use super::*;

fn load_str(name: &str, text: &str) -> Result<Contract, ContractError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    Contract::load(&path)
}

#[test]
fn toml_and_json_contracts_load() {
    let t = load_str(
        "a.toml",
        "[[columns]]\nname = \"id\"\ntype = \"int64\"\nnullable = false\n\n[[columns]]\nname = \"ts\"\ntype = \"timestamp\"\nunit = \"us\"\n",
    )
    .unwrap();
    assert_eq!(t.columns.len(), 2);
    assert_eq!(t.columns[1].unit, EpochUnit::Us);
    let j = load_str(
        "a.json",
        r#"{"columns": [{"name": "id", "type": "int32"}]}"#,
    )
    .unwrap();
    assert!(j.columns[0].nullable);
}

#[test]
fn bad_contracts_are_rejected_with_the_column() {
    for (text, needle) in [
        (
            "[[columns]]\nname = \"id\"\ntype = \"uuid\"\n",
            "unknown variant",
        ),
        ("[[columns]]\nname = \"_x\"\ntype = \"int32\"\n", "reserved"),
        (
            "[[columns]]\nname = \"a\"\ntype = \"int32\"\n[[columns]]\nname = \"a\"\ntype = \"int32\"\n",
            "twice",
        ),
        ("columns = []\n", "at least one"),
        (
            "[[columns]]\nname = \"a\"\ntype = \"int32\"\nnullable = false\non_error = \"null\"\n",
            "needs a nullable column",
        ),
        (
            "[[columns]]\nname = \"a\"\ntype = \"int32\"\non_error = \"ignore\"\n",
            "unknown variant",
        ),
        (
            "[[columns]]\nname = \"a\"\ntype = \"decimal\"\n",
            "needs `precision`",
        ),
        (
            "[[columns]]\nname = \"a\"\ntype = \"decimal\"\nprecision = 4\nscale = 5\n",
            "between 0 and `precision`",
        ),
        (
            "[[columns]]\nname = \"a\"\ntype = \"int64\"\nscale = 2\n",
            "decimal columns only",
        ),
        (
            "[[columns]]\nname = \"a\"\ntype = \"timestamp\"\ntimezone = \"Mars/Olympus\"\n",
            "not an IANA time zone",
        ),
        (
            "[[columns]]\nname = \"a\"\ntype = \"string\"\nformats = [\"%Y\"]\n",
            "timestamp columns only",
        ),
        (
            "[[columns]]\nname = \"a\"\ntype = \"int32\"\ncolour = 1\n",
            "unknown field",
        ),
    ] {
        let err = load_str("c.toml", text).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn rescuing_contracts_get_a_rescued_data_column() {
    let plain = load_str("a.toml", "[[columns]]\nname = \"id\"\ntype = \"int64\"\n").unwrap();
    assert!(!plain.rescues());
    let r = load_str(
        "r.toml",
        "[drift]\nnew_column = \"rescue\"\n[[columns]]\nname = \"id\"\ntype = \"int64\"\n",
    )
    .unwrap();
    assert!(r.rescues());
    let s = r.table_schema(&["event_date"]);
    assert_eq!(s.field(9).name(), RESCUED_COLUMN);
    assert_eq!(s.field(10).name(), "event_date");
}

#[test]
fn table_schema_has_metadata_and_partitions_last() {
    let c = load_str("a.toml", "[[columns]]\nname = \"id\"\ntype = \"int64\"\n").unwrap();
    let s = c.table_schema(&["event_date"]);
    let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names[0], "id");
    assert_eq!(&names[1..9], METADATA_COLUMNS);
    assert_eq!(names[9], "event_date");
}
