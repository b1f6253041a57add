use std::path::Path;

use super::*;

const SCHEMA: &str = "[[columns]]\nname = \"id\"\ntype = \"int64\"\n";

fn base(root: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "g"

[storage]
root = "{root}"

[flush]
max_rows = 1000
max_bytes = 1048576
max_age = "2s"

[[datasets]]
name = "customers"
topics = ["db.customers"]
format = "debezium-json"
schema = "customers.toml"
key_columns = ["id"]
"#
    )
}

/// Write `text` as `config/bronze.toml` beside `schemas/customers.toml` and load it.
fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let cfg_dir = dir.path().join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::write(dir.path().join("schemas/customers.toml"), SCHEMA).unwrap();
    let file = cfg_dir.join("bronze.toml");
    std::fs::write(&file, text).unwrap();
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cfg = Config::load_with_env(&file, &vars);
    drop(dir);
    cfg
}

#[test]
fn valid_config_resolves_paths_and_defaults() {
    let cfg = load(&base("../lake"), &[]).unwrap();
    let d = &cfg.datasets[0];
    assert!(
        cfg.storage.root.starts_with("file:///"),
        "{}",
        cfg.storage.root
    );
    assert!(d.table_uri.ends_with("/lake/customers"), "{}", d.table_uri);
    assert_eq!(d.flush.max_age, Duration::from_secs(2));
    assert_eq!(d.partitioning.by, PartitionBy::Date);
    assert_eq!(d.ordering_column, "_source_ts");
    assert_eq!(cfg.dataset_for_topic("db.customers"), Some(0));
    assert_eq!(cfg.dataset_for_topic("other"), None);
    assert!(cfg.audit.enabled);
    assert!(
        cfg.audit.table_uri.ends_with("/lake/_bronze_runs"),
        "{}",
        cfg.audit.table_uri
    );
    assert_eq!(cfg.audit.interval, Duration::from_secs(10));
}

#[test]
fn env_overrides_any_key_and_datasets_by_name() {
    let cfg = load(
        &base("../lake"),
        &[
            ("BRONZE__KAFKA__GROUP_ID", "from-env"),
            ("BRONZE__FLUSH__MAX_ROWS", "77"),
            ("BRONZE__DATASETS__CUSTOMERS__TABLE", "s3://bucket/c"),
            ("BRONZE__DATASETS__CUSTOMERS__FLUSH__MAX_AGE", "500ms"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.kafka.group_id, "from-env");
    assert_eq!(cfg.flush.max_rows, 77);
    assert_eq!(cfg.datasets[0].table_uri, "s3://bucket/c");
    assert_eq!(cfg.datasets[0].flush.max_age, Duration::from_millis(500));
    assert_eq!(cfg.datasets[0].flush.max_rows, 77);
}

#[test]
fn secrets_come_from_env_interpolation() {
    let text = base("../lake").replace(
        "group_id = \"g\"",
        "group_id = \"g\"\n[kafka.properties]\n\"sasl.password\" = \"${env:KAFKA_PW}\"",
    );
    let cfg = load(&text, &[("KAFKA_PW", "s3cret")]).unwrap();
    assert_eq!(cfg.kafka.properties["sasl.password"], "s3cret");
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(
        err.contains("KAFKA_PW") && err.contains("kafka.properties.sasl.password"),
        "{err}"
    );
}

/// Each broken config names the key and the reason.
#[test]
fn broken_configs_name_key_and_reason() {
    let good = base("../lake");
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("[flush]", "[flush]\ncolour = 1"),
            "unknown field `colour`",
        ),
        (
            good.replace("group_id = \"g\"", "group_id = \"\""),
            "kafka.group_id",
        ),
        (
            good.replace("max_age = \"2s\"", "max_age = \"soon\""),
            "flush.max_age",
        ),
        (
            good.replace("max_rows = 1000", "max_rows = 0"),
            "flush.max_rows",
        ),
        (good.replace("debezium-json", "xml"), "datasets[0].format"),
        (
            good.replace("[flush]", "[compaction]\ntarget_file_bytes = 100\n[flush]"),
            "compaction.target_file_bytes",
        ),
        (
            good.replace("[flush]", "[vacuum]\nretention = \"1h\"\n[flush]"),
            "below vacuum.min_retention",
        ),
        (
            good.replace("customers.toml", "missing.toml"),
            "does not exist",
        ),
        (
            good.replace("topics = [\"db.customers\"]", ""),
            "datasets[0].topics",
        ),
        (good.replace("../lake", "ftp://x"), "storage.root"),
        (
            good.replace("bootstrap_servers = \"127.0.0.1:9092\"\n", ""),
            "bootstrap_servers",
        ),
        (
            good.replace(
                "group_id = \"g\"",
                "group_id = \"g\"\n[kafka.properties]\n\"enable.auto.commit\" = \"true\"",
            ),
            "managed by bronze",
        ),
        (
            format!("{good}\n[metrics]\naddress = \"nope\"\n"),
            "metrics.address",
        ),
        (
            format!("{good}control = {{ allow = [\"rebuild\"] }}\n"),
            "`rebuild` is not a request kind",
        ),
        (
            format!("{good}control = {{ nope = true }}\n"),
            "unknown field",
        ),
        (
            format!("{good}\n[metrics]\naddress = \"0.0.0.0:9898\"\n"),
            "set `metrics.public = true`",
        ),
        (
            format!("{good}\n[metrics]\naddress = \"[::]:9898\"\n"),
            "listens beyond this host",
        ),
        (
            format!("{good}\n[audit]\ninterval = \"1ms\"\n"),
            "audit.interval",
        ),
        (
            format!("{good}\n[pipeline]\ndecode_threads = 0\n"),
            "pipeline.decode_threads",
        ),
        (
            format!("{good}\n[audit]\ntable = \"customers\"\n"),
            "is the table of dataset `customers`",
        ),
        (
            good.replace("[storage]", "[storage]\norphan_grace = \"5s\""),
            "storage.orphan_grace",
        ),
        ("[kafka\n".to_string(), "not valid TOML"),
    ];
    for (text, needle) in cases {
        let err = load(&text, &[]).expect_err(needle).to_string();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
        assert!(err.contains("bronze.toml"), "file named: {err}");
    }
}

#[test]
fn metrics_listen_on_loopback_unless_made_public() {
    let good = base("lake");
    let address = |text: &str| load(text, &[]).unwrap().metrics.address;
    assert_eq!(address(&good), None, "no section: no listener");
    assert_eq!(
        address(&format!("{good}\n[metrics]\n")).as_deref(),
        Some(DEFAULT_METRICS_ADDRESS)
    );
    assert_eq!(
        address(&format!("{good}\n[metrics]\naddress = \"[::1]:9000\"\n")).as_deref(),
        Some("[::1]:9000")
    );
    let public = format!("{good}\n[metrics]\naddress = \"0.0.0.0:9898\"\npublic = true\n");
    assert_eq!(address(&public).as_deref(), Some("0.0.0.0:9898"));
}

#[test]
fn a_topic_cannot_feed_two_datasets() {
    let text = format!(
        "{}\n[[datasets]]\nname = \"again\"\ntopic_pattern = \"^db\\\\..*\"\nformat = \"json\"\nschema = \"customers.toml\"\n",
        base("../lake")
    );
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("claimed by"), "{err}");
}

#[test]
fn a_dead_letter_topic_cannot_be_a_source_topic() {
    let ok = format!(
        "{}dead_letters = {{ topic = \"db.customers.dlq\" }}\n",
        base("../lake")
    );
    let cfg = load(&ok, &[]).unwrap();
    assert_eq!(
        cfg.datasets[0].dead_letters.topic.as_deref(),
        Some("db.customers.dlq")
    );
    let looping = format!(
        "{}dead_letters = {{ topic = \"db.customers\" }}\n",
        base("../lake")
    );
    let err = load(&looping, &[]).unwrap_err().to_string();
    assert!(err.contains("is a source topic of `customers`"), "{err}");
}

#[test]
fn missing_file_is_a_read_error() {
    let err = Config::load(Path::new("/nonexistent/bronze.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
}

#[test]
fn avro_datasets_need_the_schema_registry() {
    let avro = base("../lake").replace("\"debezium-json\"", "\"debezium-avro\"");
    let err = load(&avro, &[]).unwrap_err().to_string();
    assert!(
        err.contains("datasets[0].format") && err.contains("[schema_registry]"),
        "{err}"
    );
    let with_registry = format!(
        "{avro}\n[schema_registry]\nurl = \"http://registry:8081\"\nusername = \"u\"\npassword = \"${{env:REGISTRY_PASSWORD}}\"\n"
    );
    let cfg = load(&with_registry, &[("REGISTRY_PASSWORD", "p")]).unwrap();
    let r = cfg.schema_registry.unwrap();
    assert_eq!(
        (r.password.as_deref(), r.timeout, r.max_backoff),
        (Some("p"), Duration::from_secs(10), Duration::from_secs(30))
    );
    assert_eq!(cfg.datasets[0].format, Format::DebeziumAvro);
}

#[test]
fn final_flush_writers_each_get_their_minimum_of_rows() {
    let cfg = load(
        &format!(
            "{}\n[pipeline]\nfinal_flush_writers = 4\nfinal_flush_min_rows = 1000\n",
            base("../lake")
        ),
        &[],
    )
    .unwrap();
    let writers = |rows| cfg.pipeline.final_flush_writers_for(rows);
    assert_eq!(
        (
            writers(0),
            writers(1999),
            writers(2000),
            writers(3999),
            writers(1 << 20)
        ),
        (1, 1, 2, 3, 4)
    );
    let zero = format!("{}\n[pipeline]\nfinal_flush_writers = 0\n", base("../lake"));
    let err = load(&zero, &[]).unwrap_err().to_string();
    assert!(err.contains("pipeline.final_flush_writers"), "{err}");
}

#[test]
fn commit_attempts_default_and_must_allow_one_attempt() {
    let cfg = load(&base("../lake"), &[]).unwrap();
    assert_eq!(
        cfg.storage.commit_attempts,
        crate::sink::DEFAULT_COMMIT_ATTEMPTS
    );
    let text = base("../lake").replace(
        "root = \"../lake\"",
        "root = \"../lake\"\ncommit_attempts = 5",
    );
    assert_eq!(load(&text, &[]).unwrap().storage.commit_attempts, 5);
    let text = base("../lake").replace(
        "root = \"../lake\"",
        "root = \"../lake\"\ncommit_attempts = 0",
    );
    let err = load(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("storage.commit_attempts"), "{err}");
}

#[test]
fn fan_out_entries_are_checked_when_loaded() {
    let with_schema = |schema: &str, body: &str| {
        format!(
            "{}\n[[datasets]]\nname = \"inventory\"\nformat = \"debezium-json\"\nschema = \"{schema}\"\n{body}\n",
            base("../lake")
        )
    };
    let fan_out = |body: &str| with_schema("customers.toml", body);
    let cases = [
        (
            fan_out("topic_pattern = '^inv\\.(?P<table>.+)$'\ntable_name = \"{schema}_{table}\""),
            "`{schema}` is not a capture group",
        ),
        (
            fan_out("topics = [\"inv.a\"]\ntable_name = \"{1}\""),
            "a fan-out reads `topic_pattern`",
        ),
        (
            fan_out("topic_pattern = '^inv\\.(.+)$'\n[datasets.tables.a]\nkey_columns = [\"id\"]"),
            "table overrides need a fan-out",
        ),
        (
            fan_out(
                "topic_pattern = '^inv\\.(.+)$'\ntable_name = \"{1}\"\n[datasets.tables.a]\nschema = \"missing.toml\"",
            ),
            "datasets[1].tables.a.schema",
        ),
        (
            fan_out(
                "topic_pattern = '^inv\\.(.+)$'\ntable_name = \"{1}\"\n[datasets.tables.a]\ncolour = 1",
            ),
            "colour",
        ),
        (
            fan_out("topic_pattern = '^db\\.(.+)$'\ntable_name = \"{1}\""),
            "claimed by `customers` and the fan-out `inventory`",
        ),
    ];
    for (text, needle) in cases {
        let err = load(&text, &[]).expect_err(needle).to_string();
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
    // A contract path may name the table; it is checked for each table as it is made.
    let cfg = load(
        &with_schema(
            "inv/{table}.toml",
            "topic_pattern = '^inv\\.(?P<table>.+)$'\ntable_name = \"{table}\"",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(cfg.fan_outs.len(), 1);
    assert_eq!(cfg.datasets.len(), 1, "the fan-out is no dataset itself");
}
