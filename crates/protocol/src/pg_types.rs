//! Typing PostgreSQL text values into JSON the way the Elixir server's `to_jsonb(value::type)`
//! does: the one implementation, used by the server (values from pgoutput, typed by OID) and
//! by the client (string cells of older servers' records, typed by the `columns[].type` name,
//! as realtime-js's `convertChangeData`).
//!
//! pgoutput sends every value as its text form (rendered by the walsender with the settings
//! the server fixes on its connections: DateStyle ISO, TimeZone UTC, bytea hex). Each column type is
//! resolved once (domains to their base type, arrays to their element) into a [`Kind`], and
//! the text is converted per kind:
//! bool → true/false; int2/4/8, oid, float4/8, numeric → JSON numbers (NaN/±Infinity stay
//! strings, as to_jsonb does); json/jsonb → parsed; timestamp → `YYYY-MM-DDTHH:MM:SS[.f]`;
//! timestamptz → same plus `+00:00`; arrays → JSON arrays (nested for several dimensions);
//! everything else (text, uuid, date, time, bytea `\x..`, interval, enums, ...) → string.

use serde_json::{Number, Value};

/// How a type's text form becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `bool`: `t`/`f` → true/false.
    Bool,
    /// Integers and `oid` → numbers.
    Int,
    /// `float4`/`float8` → numbers (NaN and infinities stay strings).
    Float,
    /// `numeric` → numbers (NaN stays a string).
    Numeric,
    /// `json`/`jsonb` → parsed.
    Json,
    /// `timestamp` → `YYYY-MM-DDTHH:MM:SS[.f]`.
    Timestamp,
    /// `timestamptz` → the same with `+HH:MM`.
    TimestampTz,
    /// Anything else → the text as a string.
    Text,
    /// An array of the element kind, with its delimiter (`,`; `;` for `box`).
    Array(Box<Kind>, u8),
}

/// The kind of a built-in type, by OID; `None` = ask the catalog (user types).
pub fn builtin_kind(oid: u32) -> Option<Kind> {
    let arr = |k: Kind| Some(Kind::Array(Box::new(k), b','));
    match oid {
        16 => Some(Kind::Bool),
        20 | 21 | 23 | 26 => Some(Kind::Int),
        700 | 701 => Some(Kind::Float),
        1700 => Some(Kind::Numeric),
        114 | 3802 => Some(Kind::Json),
        1114 => Some(Kind::Timestamp),
        1184 => Some(Kind::TimestampTz),
        1000 => arr(Kind::Bool),
        1005 | 1007 | 1016 | 1028 => arr(Kind::Int),
        1021 | 1022 => arr(Kind::Float),
        1231 => arr(Kind::Numeric),
        199 | 3807 => arr(Kind::Json),
        1115 => arr(Kind::Timestamp),
        1185 => arr(Kind::TimestampTz),
        // text-like arrays: text, varchar, bpchar, name, uuid, date, time, timetz, bytea,
        // interval, inet, cidr, macaddr, char, money, xml, bit, varbit, tsvector...
        1009 | 1015 | 1014 | 1003 | 2951 | 1182 | 1183 | 1270 | 1001 | 1187 | 1041 | 651 | 1040
        | 1002 | 791 | 143 | 1561 | 1563 | 3643 => arr(Kind::Text),
        1020 => Some(Kind::Array(Box::new(Kind::Text), b';')), // box[]
        // ordinary scalar types whose JSON is their text
        25 | 1043 | 1042 | 19 | 2950 | 1082 | 1083 | 1266 | 17 | 1186 | 869 | 650 | 829 | 18
        | 790 | 142 | 1560 | 1562 | 3614 | 3615 | 600 | 601 | 602 | 603 | 604 | 628 | 718
        | 3220 | 2249 | 705 => Some(Kind::Text),
        _ => None,
    }
}

/// The kind of a type by its `pg_type.typname` as clients see it in `columns[].type`
/// (`int4`, `_text` for arrays, ...). `timestamptz` stays text here, as realtime-js's
/// `convertChangeData` leaves it.
pub fn kind_of_typname(typname: &str) -> Kind {
    if let Some(elem) = typname.strip_prefix('_') {
        let delim = if elem == "box" { b';' } else { b',' };
        return Kind::Array(Box::new(kind_of_typname(elem)), delim);
    }
    match typname {
        "bool" => Kind::Bool,
        "int2" | "int4" | "int8" | "oid" => Kind::Int,
        "float4" | "float8" => Kind::Float,
        "numeric" => Kind::Numeric,
        "json" | "jsonb" => Kind::Json,
        "timestamp" => Kind::Timestamp,
        _ => Kind::Text,
    }
}

/// Convert one text value of the type named `typname` (see [`kind_of_typname`]). An array
/// cell that is JSON text already (`[1,2]`) is parsed as such.
pub fn typname_to_json(typname: &str, text: &str) -> Value {
    let kind = kind_of_typname(typname);
    if matches!(kind, Kind::Array(..)) && text.trim_start().starts_with('[') {
        if let Ok(v @ Value::Array(_)) = serde_json::from_str::<Value>(text.trim()) {
            return v;
        }
    }
    let text = match kind {
        Kind::Int | Kind::Float | Kind::Numeric => text.trim(),
        _ => text,
    };
    to_json(&kind, text)
}

/// Convert one text value.
pub fn to_json(kind: &Kind, text: &str) -> Value {
    match kind {
        Kind::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        Kind::Int => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(text.to_string())),
        Kind::Float | Kind::Numeric => number(text),
        Kind::Json => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        Kind::Timestamp => Value::String(timestamp(text, false)),
        Kind::TimestampTz => Value::String(timestamp(text, true)),
        Kind::Text => Value::String(text.to_string()),
        Kind::Array(elem, delim) => match parse_array(text, *delim) {
            Some(node) => array_to_json(&node, elem),
            None => Value::String(text.to_string()),
        },
    }
}

fn number(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => {
            Number::from_f64(f).map_or_else(|| Value::String(text.to_string()), Value::Number)
        }
        _ => Value::String(text.to_string()),
    }
}

/// `2024-01-02 03:04:05.5+00` → `2024-01-02T03:04:05.5+00:00` (to_jsonb's ISO 8601 form).
fn timestamp(text: &str, tz: bool) -> String {
    if text == "infinity" || text == "-infinity" {
        return text.to_string();
    }
    let mut s = text.replacen(' ', "T", 1);
    if tz {
        // offset is the last `+hh`, `-hh`, `+hh:mm` after the time part
        if let Some(t) = s.find('T') {
            if let Some(rel) = s[t..].rfind(['+', '-']) {
                let pos = t + rel;
                let off = &s[pos + 1..];
                if off.len() == 2 && off.bytes().all(|c| c.is_ascii_digit()) {
                    s.push_str(":00");
                }
            }
        }
    }
    s
}

/// A parsed array literal.
#[derive(Debug, PartialEq)]
pub enum Node {
    /// `NULL` (unquoted).
    Null,
    /// One element's text.
    Item(String),
    /// A (sub-)array.
    List(Vec<Node>),
}

/// Parse `{1,2,NULL}`, `{"a b","c\"d"}`, `{{1,2},{3,4}}`, `[0:1]={..}`.
pub fn parse_array(text: &str, delim: u8) -> Option<Node> {
    let bytes = text.as_bytes();
    let mut i = 0;
    if bytes.first() == Some(&b'[') {
        i = text.find('=')? + 1;
    }
    let (node, end) = parse_list(bytes, i, delim)?;
    if end == bytes.len() {
        Some(node)
    } else {
        None
    }
}

fn parse_list(b: &[u8], mut i: usize, delim: u8) -> Option<(Node, usize)> {
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut items = Vec::new();
    if b.get(i) == Some(&b'}') {
        return Some((Node::List(items), i + 1));
    }
    loop {
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        match b.get(i)? {
            b'{' => {
                let (n, j) = parse_list(b, i, delim)?;
                items.push(n);
                i = j;
            }
            b'"' => {
                i += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(i)? {
                        b'\\' => {
                            s.push(*b.get(i + 1)?);
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            break;
                        }
                        c => {
                            s.push(*c);
                            i += 1;
                        }
                    }
                }
                items.push(Node::Item(String::from_utf8(s).ok()?));
            }
            _ => {
                let start = i;
                let mut s = Vec::new();
                while let Some(&c) = b.get(i) {
                    if c == delim || c == b'}' {
                        break;
                    }
                    if c == b'\\' {
                        s.push(*b.get(i + 1)?);
                        i += 2;
                        continue;
                    }
                    s.push(c);
                    i += 1;
                }
                let raw = String::from_utf8(s).ok()?;
                let trimmed = raw.trim();
                if trimmed.eq_ignore_ascii_case("NULL") && !b[start..i].contains(&b'\\') {
                    items.push(Node::Null);
                } else {
                    items.push(Node::Item(trimmed.to_string()));
                }
            }
        }
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        match b.get(i)? {
            c if *c == delim => i += 1,
            b'}' => return Some((Node::List(items), i + 1)),
            _ => return None,
        }
    }
}

fn array_to_json(node: &Node, elem: &Kind) -> Value {
    match node {
        Node::Null => Value::Null,
        Node::Item(s) => to_json(elem, s),
        Node::List(items) => Value::Array(items.iter().map(|n| array_to_json(n, elem)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn by_type_name_as_the_client_sees_columns() {
        assert_eq!(typname_to_json("int8", " 42 "), json!(42));
        assert_eq!(typname_to_json("numeric", "1.5"), json!(1.5));
        assert_eq!(typname_to_json("bool", "t"), json!(true));
        assert_eq!(typname_to_json("jsonb", r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(
            typname_to_json("timestamp", "2026-01-01 10:00:00"),
            json!("2026-01-01T10:00:00")
        );
        // realtime-js leaves timestamptz strings alone
        assert_eq!(
            typname_to_json("timestamptz", "2026-01-01 10:00:00+00"),
            json!("2026-01-01 10:00:00+00")
        );
        assert_eq!(typname_to_json("_int4", "{1,NULL,3}"), json!([1, null, 3]));
        assert_eq!(typname_to_json("_int4", "[1,2]"), json!([1, 2]));
        assert_eq!(
            typname_to_json("_text", r#"{"a,b",c}"#),
            json!(["a,b", "c"])
        );
        assert_eq!(typname_to_json("uuid", "x"), json!("x"));
    }

    #[test]
    fn scalars() {
        assert_eq!(to_json(&Kind::Bool, "t"), json!(true));
        assert_eq!(to_json(&Kind::Int, "-42"), json!(-42));
        assert_eq!(to_json(&Kind::Float, "1.5"), json!(1.5));
        assert_eq!(to_json(&Kind::Float, "NaN"), json!("NaN"));
        assert_eq!(
            to_json(&Kind::Numeric, "12345678901234"),
            json!(12345678901234i64)
        );
        assert_eq!(to_json(&Kind::Numeric, "3.25"), json!(3.25));
        assert_eq!(to_json(&Kind::Json, r#"{"a":[1,2]}"#), json!({"a":[1,2]}));
        assert_eq!(
            to_json(&Kind::Timestamp, "2024-01-02 03:04:05.123"),
            json!("2024-01-02T03:04:05.123")
        );
        assert_eq!(
            to_json(&Kind::TimestampTz, "2024-01-02 03:04:05+00"),
            json!("2024-01-02T03:04:05+00:00")
        );
        assert_eq!(
            to_json(&Kind::TimestampTz, "2024-01-02 03:04:05+05:30"),
            json!("2024-01-02T03:04:05+05:30")
        );
        assert_eq!(to_json(&Kind::Text, "x"), json!("x"));
    }

    #[test]
    fn arrays() {
        let ints = Kind::Array(Box::new(Kind::Int), b',');
        assert_eq!(to_json(&ints, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(to_json(&ints, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(to_json(&ints, "{}"), json!([]));
        assert_eq!(to_json(&ints, "[0:1]={5,6}"), json!([5, 6]));
        let texts = Kind::Array(Box::new(Kind::Text), b',');
        assert_eq!(
            to_json(&texts, r#"{"a b","c\"d",plain,"NULL"}"#),
            json!(["a b", "c\"d", "plain", "NULL"])
        );
        let js = Kind::Array(Box::new(Kind::Json), b',');
        assert_eq!(to_json(&js, r#"{"{\"a\": 1}"}"#), json!([{"a": 1}]));
        assert_eq!(to_json(&ints, "{1,2"), json!("{1,2"));
    }
}
