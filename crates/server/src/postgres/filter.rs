//! The `filter` grammar of a postgres_changes binding (PROTOCOL.md §5.5), parsed in Rust.
//!
//! `column=op.value`, `column=not.op.value`, several conditions joined by `,` are ANDed.
//! Values may be wrapped in double quotes (to hold `,` `(` `)`), inside which `\` escapes the
//! next character; outside quotes `\,` is a literal comma. `in` takes `(a,b,"c,d")` (at most
//! 100 values); `is` takes `null`, `true`, `false` or `unknown`.
//! Operators: eq neq lt lte gt gte in like ilike match imatch is isdistinct.

use std::fmt::Write as _;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Like,
    Ilike,
    /// `~` (POSIX regex in PostgreSQL; evaluated with `regex-lite`, which agrees on the
    /// common syntax: classes, anchors, alternation, repetition)
    Match,
    /// `~*`
    Imatch,
    Is,
    IsDistinct,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "like" => Op::Like,
            "ilike" => Op::Ilike,
            "match" => Op::Match,
            "imatch" => Op::Imatch,
            "is" => Op::Is,
            "isdistinct" => Op::IsDistinct,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::Is => "is",
            Op::IsDistinct => "isdistinct",
        }
    }
}

/// The right-hand side of a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FilterValue {
    One(String),
    List(Vec<String>),
    /// `is.null`
    Null,
    /// `is.true` / `is.false`
    Bool(bool),
    /// `is.unknown`
    Unknown,
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) column: String,
    pub(crate) op: Op,
    pub(crate) negate: bool,
    pub(crate) value: FilterValue,
}

const PREFIX: &str = "Error parsing `filter` params: ";

fn inspect_list(parts: &[&str]) -> String {
    let mut s = String::from("[");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{:?}", p);
    }
    s.push(']');
    s
}

/// Split on commas that are outside double quotes and parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quoted, mut chars) = (0i32, false, s.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '(' if !quoted => {
                depth += 1;
                cur.push(c);
            }
            ')' if !quoted => {
                depth = (depth - 1).max(0);
                cur.push(c);
            }
            ',' if !quoted && depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// `"a\"b"` → `a"b`; unquoted values only lose `\` escapes.
fn unquote(v: &str) -> String {
    let inner = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        &v[1..v.len() - 1]
    } else {
        v
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse a filter string; `Ok(vec![])` for none.
pub(crate) fn parse(filter: &str) -> Result<Vec<Condition>, String> {
    if filter.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for seg in split_top(filter) {
        let seg = seg.trim();
        if seg.is_empty() {
            return Err(format!(
                "{PREFIX}filter must not contain empty segments (check for extra commas)"
            ));
        }
        let Some((col, rest)) = seg.split_once('=') else {
            return Err(format!("{PREFIX}{}", inspect_list(&[seg])));
        };
        let bad = || format!("{PREFIX}{}", inspect_list(&[col, rest]));
        let column = col.trim();
        if column.is_empty() {
            return Err(bad());
        }
        let (negate, opv) = match rest.strip_prefix("not.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let Some((op, raw)) = opv.split_once('.') else {
            return Err(bad());
        };
        let Some(op) = Op::parse(op) else {
            return Err(bad());
        };
        let value = match op {
            Op::In => {
                let raw = raw.trim();
                if !(raw.starts_with('(') && raw.ends_with(')')) {
                    return Err(format!(
                        "{PREFIX}`in` filter value must be wrapped by parentheses"
                    ));
                }
                let inner = &raw[1..raw.len() - 1];
                let items: Vec<String> = if inner.trim().is_empty() {
                    Vec::new()
                } else {
                    split_top(inner).iter().map(|s| unquote(s.trim())).collect()
                };
                if items.len() > 100 {
                    return Err(format!(
                        "{PREFIX}`in` filter value can have at most 100 items"
                    ));
                }
                FilterValue::List(items)
            }
            Op::Is => match raw.trim().to_ascii_lowercase().as_str() {
                "null" => FilterValue::Null,
                "true" => FilterValue::Bool(true),
                "false" => FilterValue::Bool(false),
                "unknown" => FilterValue::Unknown,
                _ => {
                    return Err(format!(
                        "{PREFIX}`is` filter value must be one of null, true, false or unknown"
                    ))
                }
            },
            _ => FilterValue::One(unquote(raw)),
        };
        out.push(Condition {
            column: column.to_string(),
            op,
            negate,
            value,
        });
    }
    Ok(out)
}

/// Elixir-style rendering of the parsed conditions, for error texts:
/// `[{"id", "eq", "1"}]`.
pub(crate) fn inspect(conds: &[Condition]) -> String {
    let parts: Vec<String> = conds
        .iter()
        .map(|c| {
            let op = if c.negate {
                format!("not.{}", c.op.as_str())
            } else {
                c.op.as_str().to_string()
            };
            let v = match &c.value {
                FilterValue::One(v) => format!("{v:?}"),
                FilterValue::List(l) => format!("{:?}", format!("{{{}}}", l.join(","))),
                FilterValue::Null => "\"null\"".into(),
                FilterValue::Bool(b) => format!("\"{b}\""),
                FilterValue::Unknown => "\"unknown\"".into(),
            };
            format!("{{{:?}, {:?}, {}}}", c.column, op, v)
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// SQL LIKE: `%` any run, `_` one char, `\` escapes.
pub(crate) fn like(text: &str, pattern: &str, case_insensitive: bool) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = if case_insensitive {
        (
            text.to_lowercase().chars().collect(),
            pattern.to_lowercase().chars().collect(),
        )
    } else {
        (text.chars().collect(), pattern.chars().collect())
    };
    fn go(t: &[char], p: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('%') => {
                let rest = &p[1..];
                (0..=t.len()).any(|i| go(&t[i..], rest))
            }
            Some('_') => !t.is_empty() && go(&t[1..], &p[1..]),
            Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && go(&t[1..], &p[2..]),
            Some(c) => t.first() == Some(c) && go(&t[1..], &p[1..]),
        }
    }
    go(&t, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(col: &str, op: Op, negate: bool, v: &str) -> Condition {
        Condition {
            column: col.into(),
            op,
            negate,
            value: FilterValue::One(v.into()),
        }
    }

    #[test]
    fn grammar() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("  ").unwrap(), vec![]);
        assert_eq!(
            parse("id=eq.1").unwrap(),
            vec![one("id", Op::Eq, false, "1")]
        );
        assert_eq!(
            parse("id=gt.0,id=lt.100").unwrap(),
            vec![
                one("id", Op::Gt, false, "0"),
                one("id", Op::Lt, false, "100")
            ]
        );
        assert_eq!(
            parse("name=not.eq.bob").unwrap(),
            vec![one("name", Op::Eq, true, "bob")]
        );
        assert_eq!(
            parse(r#"name=eq."a,b (c)""#).unwrap(),
            vec![one("name", Op::Eq, false, "a,b (c)")]
        );
        assert_eq!(
            parse(r#"name=eq."say \"hi\"""#).unwrap(),
            vec![one("name", Op::Eq, false, "say \"hi\"")]
        );
        assert_eq!(
            parse(r"area=eq.Oslo\, Norway").unwrap(),
            vec![one("area", Op::Eq, false, "Oslo, Norway")]
        );
        assert_eq!(
            parse("v=eq.1.5").unwrap(),
            vec![one("v", Op::Eq, false, "1.5")]
        );
        assert_eq!(
            parse(r#"status=in.(draft,"a,b",x)"#).unwrap(),
            vec![Condition {
                column: "status".into(),
                op: Op::In,
                negate: false,
                value: FilterValue::List(vec!["draft".into(), "a,b".into(), "x".into()])
            }]
        );
        assert_eq!(parse("d=is.null").unwrap()[0].value, FilterValue::Null);
        assert!(parse("d=not.is.NULL").unwrap()[0].negate);
        assert_eq!(
            parse("b=is.true").unwrap()[0].value,
            FilterValue::Bool(true)
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse("foo=hey").unwrap_err(),
            r#"Error parsing `filter` params: ["foo", "hey"]"#
        );
        assert_eq!(
            parse("foo").unwrap_err(),
            r#"Error parsing `filter` params: ["foo"]"#
        );
        assert_eq!(
            parse("id=xx.1").unwrap_err(),
            r#"Error parsing `filter` params: ["id", "xx.1"]"#
        );
        assert_eq!(
            parse("id=in.1,2").unwrap_err(),
            "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
        );
        assert_eq!(
            parse("id=eq.1,,id=eq.2").unwrap_err(),
            "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"
        );
        assert!(parse("id=eq.1,").is_err());
        assert!(parse("d=is.maybe").is_err());
        let many = format!(
            "id=in.({})",
            (0..101)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(parse(&many).is_err());
    }

    #[test]
    fn like_patterns() {
        assert!(like("hello", "h%o", false));
        assert!(like("hello", "h_llo", false));
        assert!(!like("Hello", "h%", false));
        assert!(like("Hello", "h%", true));
        assert!(like("50%", "50\\%", false));
        assert!(!like("500", "50\\%", false));
    }

    /// Random strings over the grammar's alphabet never panic, and well-formed conditions
    /// round-trip through the quoting a client would apply.
    #[test]
    fn random_inputs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "ab=.,()\\\" not.eq.in.is.null.like%_ é".chars().collect();
        for _ in 0..20_000 {
            let n = rng.gen_range(0..24);
            let s: String = (0..n)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let _ = parse(&s);
        }
        for _ in 0..2_000 {
            let n = rng.gen_range(0..12);
            let v: String = (0..n)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let quoted = format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
            let parsed = parse(&format!("col=eq.{quoted}")).unwrap();
            assert_eq!(parsed, vec![one("col", Op::Eq, false, &v)], "value {v:?}");
        }
    }

    #[test]
    fn inspect_form() {
        assert_eq!(
            inspect(&parse("id=eq.1").unwrap()),
            r#"[{"id", "eq", "1"}]"#
        );
    }
}
