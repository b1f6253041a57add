"""Broken configurations: every one gives a clear message naming the file and key, and exit code 2."""

import pytest

import harness as h

GOOD = h.cdc_datasets("a.customers", "a.orders")


def config_text(tmp_path, **kw) -> str:
    return h.write_config(tmp_path, group="g", root=str(tmp_path / "lake"), datasets=GOOD, **kw).read_text()


CASES = [
    # (name, edit of the good text, expected fragment)
    ("unknown key", lambda t: t.replace("[flush]", "[flush]\nmax_rowz = 5"), "unknown field `max_rowz`"),
    ("unknown top-level section", lambda t: t + "\n[sinks]\nx = 1\n", "unknown field `sinks`"),
    ("wrong type", lambda t: t.replace("max_rows = 100000", 'max_rows = "many"'), "flush.max_rows"),
    ("bad duration", lambda t: t.replace('max_age = "1s"', 'max_age = "forever"'), "flush.max_age"),
    ("empty group id", lambda t: t.replace('group_id = "g"', 'group_id = ""'), "kafka.group_id"),
    ("missing bootstrap", lambda t: "\n".join(l for l in t.splitlines() if not l.startswith("bootstrap")),
     "missing field `bootstrap_servers`"),
    ("unknown format", lambda t: t.replace('"debezium-json"', '"protobuf"', 1), "datasets[0].format"),
    ("missing schema file", lambda t: t.replace('"customers.toml"', '"nope.toml"'), "does not exist"),
    ("unknown key column", lambda t: t.replace('key_columns = ["id"]', 'key_columns = ["nope"]', 1),
     "key column `nope`"),
    ("reserved kafka property", lambda t: t.replace("[storage]", '[kafka.properties]\n"enable.auto.commit" = "true"\n\n[storage]'),
     "managed by bronze"),
    ("bad storage scheme", lambda t: t.replace(f'root = "', 'root = "gs://x', 1), "storage.root"),
    ("duplicate dataset", lambda t: t.replace('name = "orders"', 'name = "customers"'), "defined twice"),
    ("invalid TOML", lambda t: t + "\n[kafka\n", "not valid TOML"),
    ("bad regex", lambda t: t.replace('topics = ["a.orders"]', 'topic_pattern = "(["'), "topic_pattern"),
    ("unset secret", lambda t: t.replace('group_id = "g"', 'group_id = "${env:BRONZE_TEST_UNSET_VAR}"'),
     "BRONZE_TEST_UNSET_VAR"),
]


@pytest.mark.parametrize("name,edit,needle", CASES, ids=[c[0] for c in CASES])
def test_broken_config_exits_2_with_a_clear_message(tmp_path, name, edit, needle):
    path = tmp_path / "bronze.toml"
    path.write_text(edit(config_text(tmp_path)))
    for command in ("validate", "run"):
        proc = h.run_bronze(path, command, check=False, timeout=60)
        assert proc.returncode == 2, f"{command}: {proc.returncode}\n{proc.stderr}"
        assert needle in proc.stderr, proc.stderr
        assert "bronze.toml" in proc.stderr or "nope.toml" in proc.stderr, proc.stderr
        assert "panicked" not in proc.stderr


def test_env_override_fixes_a_bad_value(tmp_path):
    path = tmp_path / "bronze.toml"
    path.write_text(config_text(tmp_path).replace('group_id = "g"', 'group_id = ""'))
    assert h.run_bronze(path, "validate", check=False).returncode == 2
    ok = h.run_bronze(path, "validate", env={"BRONZE__KAFKA__GROUP_ID": "fixed"})
    assert "valid" in ok.stdout


def test_unwritable_storage_fails_validation(tmp_path):
    path = tmp_path / "bronze.toml"
    path.write_text(config_text(tmp_path).replace(f'root = "{tmp_path / "lake"}"', 'root = "/proc/bronze-lake"'))
    proc = h.run_bronze(path, "validate", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "not a writable directory" in proc.stderr


def test_help_explains_each_command():
    import subprocess
    out = subprocess.run([h.bronze_bin(), "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("run", "validate", "summary"):
        assert cmd in out
    run_help = subprocess.run([h.bronze_bin(), "run", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--until-caught-up" in run_help and "--config" in run_help
