//! Evaluating compiled filter conditions against a row's text values.
//!
//! The right-hand sides were cast by PostgreSQL at subscribe time and printed back as text
//! (subscribe.rs), and the WAL values are PostgreSQL's own text output (same session settings),
//! so equality is text equality for every type; ordering is numeric for number kinds, boolean
//! for bool, and byte order otherwise (correct for ISO dates/timestamps, uuids; for text it is
//! the C collation). A NULL column value never passes a comparison, negated or not
//! (SQL three-valued logic), except for `is` / `isdistinct`.

use std::cmp::Ordering;

use super::filter::{like, FilterValue, Op};
use super::subscribe::CompiledCond;
use super::types::Kind;

/// A row: column name → text value (`None` = NULL). Columns absent from the row (e.g. not in
/// the replica identity) make conditions on them fail.
pub(crate) trait Row {
    fn get(&self, column: &str) -> Option<Option<&str>>;
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "t" | "true" => Some(true),
        "f" | "false" => Some(false),
        _ => None,
    }
}

fn compare(kind: &Kind, a: &str, b: &str) -> Option<Ordering> {
    match kind {
        Kind::Int | Kind::Float | Kind::Numeric => {
            if let (Ok(x), Ok(y)) = (a.parse::<i128>(), b.parse::<i128>()) {
                return Some(x.cmp(&y));
            }
            let (x, y) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
            x.partial_cmp(&y)
        }
        Kind::Bool => Some(parse_bool(a)?.cmp(&parse_bool(b)?)),
        _ => Some(a.as_bytes().cmp(b.as_bytes())),
    }
}

fn equal(kind: &Kind, a: &str, b: &str) -> bool {
    match kind {
        Kind::Int | Kind::Float | Kind::Numeric | Kind::Bool => {
            compare(kind, a, b) == Some(Ordering::Equal)
        }
        _ => a == b,
    }
}

/// Does the row pass this condition?
pub(crate) fn check(cond: &CompiledCond, row: &dyn Row) -> bool {
    let Some(value) = row.get(&cond.column) else {
        return false;
    };
    let one = |f: &dyn Fn(&str, &str) -> bool| -> bool {
        match (value, &cond.value) {
            (Some(v), FilterValue::One(rhs)) => f(v, rhs) != cond.negate,
            _ => false,
        }
    };
    let k = &cond.kind;
    match cond.op {
        Op::Eq => one(&|a, b| equal(k, a, b)),
        Op::Neq => one(&|a, b| !equal(k, a, b)),
        Op::Lt => one(&|a, b| compare(k, a, b) == Some(Ordering::Less)),
        Op::Lte => one(&|a, b| matches!(compare(k, a, b), Some(Ordering::Less | Ordering::Equal))),
        Op::Gt => one(&|a, b| compare(k, a, b) == Some(Ordering::Greater)),
        Op::Gte => {
            one(&|a, b| matches!(compare(k, a, b), Some(Ordering::Greater | Ordering::Equal)))
        }
        Op::Like => one(&|a, b| like(a, b, false)),
        Op::Ilike => one(&|a, b| like(a, b, true)),
        Op::Match | Op::Imatch => match (&cond.regex, value) {
            (Some(re), Some(v)) => re.is_match(v) != cond.negate,
            _ => false,
        },
        Op::In => match (value, &cond.value) {
            (Some(v), FilterValue::List(items)) => {
                items.iter().any(|i| equal(k, v, i)) != cond.negate
            }
            _ => false,
        },
        Op::Is => {
            let r = match &cond.value {
                FilterValue::Null | FilterValue::Unknown => value.is_none(),
                FilterValue::Bool(b) => value.and_then(parse_bool) == Some(*b),
                _ => false,
            };
            r != cond.negate
        }
        Op::IsDistinct => {
            let distinct = match (value, &cond.value) {
                (None, FilterValue::One(_)) => true,
                (Some(v), FilterValue::One(rhs)) => !equal(k, v, rhs),
                (None, FilterValue::Null) => false,
                (Some(_), FilterValue::Null) => true,
                _ => true,
            };
            distinct != cond.negate
        }
    }
}

/// All conditions (AND).
pub(crate) fn check_all(conds: &[CompiledCond], row: &dyn Row) -> bool {
    conds.iter().all(|c| check(c, row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct M(HashMap<&'static str, Option<&'static str>>);
    impl Row for M {
        fn get(&self, c: &str) -> Option<Option<&str>> {
            self.0.get(c).copied()
        }
    }

    fn cond(column: &str, op: Op, negate: bool, kind: Kind, value: FilterValue) -> CompiledCond {
        CompiledCond {
            column: column.into(),
            op,
            negate,
            kind,
            value,
            regex: None,
        }
    }
    fn v(s: &str) -> FilterValue {
        FilterValue::One(s.into())
    }

    #[test]
    fn operators() {
        let row = M(HashMap::from([
            ("id", Some("10")),
            ("name", Some("Bob")),
            ("gone", None),
            ("ok", Some("t")),
        ]));
        let t = |c: CompiledCond| check(&c, &row);
        assert!(t(cond("id", Op::Eq, false, Kind::Int, v("10"))));
        assert!(!t(cond("id", Op::Eq, true, Kind::Int, v("10"))));
        assert!(t(cond("id", Op::Neq, false, Kind::Int, v("11"))));
        assert!(t(cond("id", Op::Gt, false, Kind::Int, v("9"))));
        assert!(!t(cond("id", Op::Gt, false, Kind::Int, v("10"))));
        assert!(t(cond("id", Op::Gte, false, Kind::Int, v("10"))));
        assert!(t(cond("id", Op::Lt, false, Kind::Int, v("100")))); // numeric, not text, order
        assert!(t(cond("id", Op::Lte, false, Kind::Float, v("10.0"))));
        assert!(t(cond(
            "id",
            Op::In,
            false,
            Kind::Int,
            FilterValue::List(vec!["1".into(), "10".into()])
        )));
        assert!(t(cond(
            "id",
            Op::In,
            true,
            Kind::Int,
            FilterValue::List(vec!["1".into()])
        )));
        assert!(t(cond("name", Op::Like, false, Kind::Text, v("B%"))));
        assert!(t(cond("name", Op::Ilike, false, Kind::Text, v("b%"))));
        assert!(!t(cond("gone", Op::Eq, false, Kind::Text, v("x"))));
        assert!(!t(cond("gone", Op::Eq, true, Kind::Text, v("x"))));
        assert!(t(cond(
            "gone",
            Op::Is,
            false,
            Kind::Text,
            FilterValue::Null
        )));
        assert!(t(cond("name", Op::Is, true, Kind::Text, FilterValue::Null)));
        assert!(t(cond(
            "ok",
            Op::Is,
            false,
            Kind::Bool,
            FilterValue::Bool(true)
        )));
        assert!(t(cond("ok", Op::Eq, false, Kind::Bool, v("true"))));
        assert!(t(cond("gone", Op::IsDistinct, false, Kind::Text, v("x"))));
        assert!(!t(cond(
            "name",
            Op::IsDistinct,
            false,
            Kind::Text,
            v("Bob")
        )));
        assert!(!t(cond("missing", Op::Eq, false, Kind::Text, v("x"))));
    }
}
