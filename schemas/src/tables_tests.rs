//! Checks the table files against each other, the event envelope and the `col` constants.

use std::collections::BTreeSet;

use arrow_schema::DataType;
use iceberg::spec::{PrimitiveType, Transform, Type};

use super::*;
use crate::event::FIELDS;
use crate::money;

fn columns(def: &TableDef) -> Vec<String> {
    def.schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.name.clone())
        .collect()
}

#[test]
fn every_table_loads_and_has_an_arrow_form() {
    let defs = all();
    let names: Vec<_> = defs.iter().map(|d| d.name).collect();
    assert_eq!(
        names,
        [
            "ledger_events",
            "trip_balances",
            "rejected_events",
            "verification_runs",
            "verification_discrepancies"
        ]
    );
    assert_eq!(TableName::ALL.map(TableName::as_str), names[..]);
    for def in &defs {
        let arrow = arrow_schema(def);
        assert_eq!(arrow.fields().len(), def.schema.as_struct().fields().len());
        for (af, nf) in arrow.fields().iter().zip(def.schema.as_struct().fields()) {
            assert_eq!(af.name(), &nf.name);
            assert_eq!(af.is_nullable(), !nf.required, "{}.{}", def.name, nf.name);
            assert_eq!(
                af.metadata().get("PARQUET:field_id"),
                Some(&nf.id.to_string()),
                "{}.{} keeps its field id",
                def.name,
                nf.name
            );
        }
        let _ = def.creation();
    }
}

#[test]
fn money_columns_are_the_one_money_type() {
    let money_type = Type::Primitive(PrimitiveType::Decimal {
        precision: money::PRECISION,
        scale: money::SCALE,
    });
    let mut seen = 0;
    for def in all() {
        for f in def.schema.as_struct().fields() {
            if let Type::Primitive(PrimitiveType::Decimal { .. }) = *f.field_type {
                assert_eq!(*f.field_type, money_type, "{}.{}", def.name, f.name);
                seen += 1;
            }
        }
        for af in arrow_schema(&def).fields() {
            assert!(
                !matches!(
                    af.data_type(),
                    DataType::Float16 | DataType::Float32 | DataType::Float64
                ),
                "no floats for money: {}.{}",
                def.name,
                af.name()
            );
        }
    }
    assert_eq!(seen, 1 + 8, "amount + six sums + two balances");
}

#[test]
fn ledger_events_holds_every_envelope_field() {
    let def = ledger_events();
    let cols = columns(&def);
    assert_eq!(
        &cols[..FIELDS.len()],
        FIELDS,
        "envelope fields first, in order"
    );
    let id = def.schema.field_by_name(col::EVENT_ID).unwrap();
    assert!(id.required);
    assert_eq!(
        def.schema.identifier_field_ids().collect::<Vec<_>>(),
        [id.id]
    );
    // Required-ness follows the envelope.
    for f in FIELDS {
        let field = def.schema.field_by_name(f).unwrap();
        assert_eq!(
            field.required,
            crate::event::REQUIRED_FIELDS.contains(&f),
            "{f}"
        );
    }
}

#[test]
fn partition_specs() {
    let check = |def: TableDef, expected: Option<(&str, Transform)>| {
        let fields = def.partition.fields();
        match expected {
            None => assert!(fields.is_empty(), "{} is unpartitioned", def.name),
            Some((source, transform)) => {
                assert_eq!(fields.len(), 1, "{}", def.name);
                let src = def.schema.field_by_id(fields[0].source_id).unwrap();
                assert_eq!(src.name, source, "{}", def.name);
                assert_eq!(fields[0].transform, transform, "{}", def.name);
            }
        }
        // Binding proves source ids and transforms are valid for the schema.
        def.partition
            .clone()
            .bind(def.schema.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", def.name));
    };
    check(ledger_events(), Some((col::OCCURRED_AT, Transform::Day)));
    check(rejected_events(), Some((col::REJECTED_AT, Transform::Day)));
    check(trip_balances(), None);
    check(verification_runs(), None);
    check(verification_discrepancies(), None);
}

#[test]
fn col_constants_are_exactly_the_columns() {
    let in_files: BTreeSet<String> = all().iter().flat_map(columns).collect();
    let constants: BTreeSet<String> = col::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(constants.len(), col::ALL.len(), "no repeated constant");
    assert_eq!(in_files, constants);
}

#[test]
fn field_ids_unique_per_table() {
    for def in all() {
        let ids: BTreeSet<i32> = def
            .schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(
            ids.len(),
            def.schema.as_struct().fields().len(),
            "{}",
            def.name
        );
    }
}
