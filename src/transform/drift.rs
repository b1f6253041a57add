//! Drift: how a message differed from the contract's columns, counted per kind and column over the
//! messages since the last report, and the error for drift the dataset's policy does not let pass.

use std::collections::BTreeMap;

use super::{Mapper, TransformError};
use crate::contract::{DriftAction, OnError};

/// How a message differed from the contract's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    NewColumn,
    MissingColumn,
    /// A field arrived under one of a column's `aliases`.
    Renamed,
    /// A value of a wider type than its column (int32→int64, float32→float64, date→timestamp, decimal
    /// precision up).
    TypeWidening,
    /// A value of a type its column cannot take (narrowing or incompatible); the column's `on_error`.
    TypeChange,
    /// A null for a column the contract says is not nullable (the source column became nullable); the
    /// column's `on_error`.
    Nullability,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::NewColumn => "new_column",
            DriftKind::MissingColumn => "missing_column",
            DriftKind::Renamed => "renamed",
            DriftKind::TypeWidening => "type_widening",
            DriftKind::TypeChange => "type_change",
            DriftKind::Nullability => "nullability",
        }
    }
}

impl std::fmt::Display for DriftKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriftKind::NewColumn => "new column",
            DriftKind::MissingColumn => "missing column",
            DriftKind::Renamed => "renamed column",
            DriftKind::TypeWidening => "wider type in column",
            DriftKind::TypeChange => "incompatible type in column",
            DriftKind::Nullability => "null in non-nullable column",
        })
    }
}

/// One kind of drift on one column, as seen over the messages since the last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftEvent {
    pub kind: DriftKind,
    pub column: String,
    /// What arrived (a JSON kind, or the field name for a rename).
    pub observed: String,
    /// What the contract says (its type, or the column name for a rename).
    pub expected: String,
    /// The policy applied: `ignore`, `quarantine`, `fail`, or `mapped` for renames.
    pub action: &'static str,
    pub messages: u64,
}

/// Count one message showing `kind` of drift on `column`. Runs per message, so it allocates only the
/// first time a column shows a kind of drift.
pub(super) fn observe(
    drift: &mut BTreeMap<DriftKind, BTreeMap<String, DriftEvent>>,
    kind: DriftKind,
    column: &str,
    observed: &str,
    expected: &str,
    action: &'static str,
) {
    let by_column = drift.entry(kind).or_default();
    match by_column.get_mut(column) {
        Some(e) => e.messages += 1,
        None => {
            by_column.insert(
                column.to_string(),
                DriftEvent {
                    kind,
                    column: column.to_string(),
                    observed: observed.to_string(),
                    expected: expected.to_string(),
                    action,
                    messages: 1,
                },
            );
        }
    }
}

/// What mapping messages observed beyond their rows, for the caller to count.
#[derive(Debug, Default)]
pub struct Observations {
    /// Drift, one event per kind and column (see [`Mapper::take_drift`]).
    pub drift: Vec<DriftEvent>,
    /// Values that broke their column's contract: column and the rule applied.
    pub column_errors: Vec<(String, OnError)>,
}

impl Mapper {
    /// The error for drift the policy does not let pass.
    pub(super) fn drift_error(
        kind: DriftKind,
        column: &str,
        detail: String,
        policy: DriftAction,
    ) -> Option<TransformError> {
        let action = match policy {
            DriftAction::Ignore
            | DriftAction::Rescue
            | DriftAction::Evolve
            | DriftAction::Review => return None,
            DriftAction::Quarantine => OnError::DeadLetter,
            DriftAction::Fail => OnError::Fail,
        };
        Some(TransformError::Drift {
            kind,
            column: column.to_string(),
            detail,
            policy: policy.as_str(),
            action,
        })
    }
}
