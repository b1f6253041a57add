"""`bronze contract generate`: a dataset's contract derived from the Kafka Connect schema its messages
carry (Debezium JSON with `schemas.enable=true`), written over the dataset's schema file, and then used
as it is to ingest the topic."""

import json

import harness as h
from harness.setups import send

FIXTURES = h.REPO.parent / "shared" / "fixtures" / "debezium"


def test_a_contract_derived_from_the_connect_schema_ingests_its_topic(tmp_path):
    message = json.loads((FIXTURES / "debezium-mysql-r-tutorial-customers-key-value-with-schema.json").read_text())[0]
    alltypes = json.loads((FIXTURES / "debezium-mysql-r-paimon-alltypes-value-with-schema-decimal-numeric.json")
                          .read_text())
    customers, types = h.unique("gen.customers"), h.unique("gen.alltypes")
    h.create_topics({customers: 1, types: 1})
    send(customers, [(json.dumps(message["key"]), json.dumps(message["value"]).encode())])
    send(types, [("k", json.dumps(alltypes).encode())])
    # The schema files are to be written: empty ones do.
    (tmp_path / "customers.toml").write_text("")
    (tmp_path / "alltypes.toml").write_text("")
    cfg = h.write_config(tmp_path, group=h.unique("gen"), root=str(tmp_path / "lake"), datasets=[
        {"name": '"customers"', "topics": f'["{customers}"]', "format": '"debezium-json"',
         "schema": f'"{tmp_path / "customers.toml"}"', "key_columns": '["id"]'},
        {"name": '"alltypes"', "topics": f'["{types}"]', "format": '"debezium-json"',
         "schema": f'"{tmp_path / "alltypes.toml"}"', "partitioning": '{ by = "none" }'}])

    printed = h.run_bronze(cfg, "contract", "generate", "--dataset", "customers").stdout
    assert 'name = "first_name"' in printed and (tmp_path / "customers.toml").read_text() == ""
    out = h.run_bronze(cfg, "contract", "generate", "--write").stdout
    assert "customers: 4 columns" in out, out
    contract = (tmp_path / "customers.toml").read_text()
    assert "key_columns = [\"id\"]" in contract and f"{customers}[0]@0" in contract, contract
    assert '[[columns]]\nname = "id"\ntype = "int32"\nnullable = false' in contract
    types_contract = (tmp_path / "alltypes.toml").read_text()
    assert "precision 40 is beyond Delta's 38" in types_contract
    # Names normalized as the mapper normalizes the fields (`_datetime6` -> `datetime6`).
    assert 'name = "datetime6"\ntype = "timestamp"\nunit = "us"' in types_contract

    # The derived contracts ingest what they were derived from, every value typed.
    h.run_bronze(cfg, "run", "--until-caught-up")
    rows = h.read_delta(str(tmp_path / "lake" / "customers")).to_pylist()
    assert [(r["id"], r["first_name"], r["email"]) for r in rows] == [(1004, "Anne", "annek@noanswer.org")]
    row = h.read_delta(str(tmp_path / "lake" / "alltypes")).to_pylist()[0]
    after = alltypes["payload"]["after"]
    assert row["id"] == after["_id"] and row["varchar"] == after["_varchar"]
    assert row["date"] is not None and row["datetime6"] is not None and row["numeric"] is not None
