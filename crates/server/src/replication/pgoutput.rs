//! Decoding of the `pgoutput` logical-replication messages (protocol version 1).
//!
//! Why pgoutput and not wal2json (which the Elixir server polls with): pgoutput ships inside
//! every PostgreSQL ≥ 10, so no extension has to be installed on the user's database, it is
//! always allowed by `output_plugin_libraries` (PostgreSQL's 2026 releases only allow listed
//! plugins, and wal2json is not listed by default), it filters by the publication on the
//! server (only `supabase_realtime` tables are decoded and sent), and it streams compact
//! frames: relation metadata once, then one tuple per change with every value in its text
//! form. Typing those texts into JSON happens in Rust (types.rs).

use bytes::{Buf, Bytes};

/// A column as described by a Relation message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RelColumn {
    pub(crate) is_key: bool,
    pub(crate) name: String,
    pub(crate) type_oid: u32,
}

/// A Relation message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Relation {
    pub(crate) id: u32,
    pub(crate) schema: String,
    pub(crate) table: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub(crate) replica_identity: u8,
    pub(crate) columns: Vec<RelColumn>,
}

/// One value of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Datum {
    Null,
    /// Unchanged TOASTed value (not sent).
    Unchanged,
    Text(String),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message {
    Begin {
        final_lsn: u64,
        commit_ts: i64,
        /// The transaction id (32 bits, no epoch).
        xid: u32,
    },
    Commit {
        end_lsn: u64,
        commit_ts: i64,
    },
    Relation(Relation),
    Insert {
        rel: u32,
        new: Vec<Datum>,
    },
    Update {
        rel: u32,
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete {
        rel: u32,
        old: Vec<Datum>,
    },
    /// Origin, Type, Truncate, logical messages: not used.
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub(crate) struct DecodeError(&'static str);

fn need(b: &Bytes, n: usize) -> Result<(), DecodeError> {
    if b.remaining() < n {
        Err(DecodeError("truncated"))
    } else {
        Ok(())
    }
}

fn cstr(b: &mut Bytes) -> Result<String, DecodeError> {
    let end = b
        .iter()
        .position(|c| *c == 0)
        .ok_or(DecodeError("unterminated string"))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

fn tuple(b: &mut Bytes) -> Result<Vec<Datum>, DecodeError> {
    need(b, 2)?;
    let n = b.get_i16();
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        need(b, 1)?;
        match b.get_u8() {
            b'n' => out.push(Datum::Null),
            b'u' => out.push(Datum::Unchanged),
            b't' | b'b' => {
                need(b, 4)?;
                let len = b.get_i32();
                if len < 0 {
                    return Err(DecodeError("negative length"));
                }
                need(b, len as usize)?;
                let v = b.split_to(len as usize);
                out.push(Datum::Text(match String::from_utf8(v.to_vec()) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                }));
            }
            _ => return Err(DecodeError("unknown tuple kind")),
        }
    }
    Ok(out)
}

/// Decode one pgoutput message.
pub(crate) fn decode(mut b: Bytes) -> Result<Message, DecodeError> {
    need(&b, 1)?;
    let tag = b.get_u8();
    Ok(match tag {
        b'B' => {
            need(&b, 20)?;
            let final_lsn = b.get_u64();
            let commit_ts = b.get_i64();
            let xid = b.get_u32();
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            }
        }
        b'C' => {
            need(&b, 25)?;
            let _flags = b.get_u8();
            let _commit_lsn = b.get_u64();
            let end_lsn = b.get_u64();
            let commit_ts = b.get_i64();
            Message::Commit { end_lsn, commit_ts }
        }
        b'R' => {
            need(&b, 4)?;
            let id = b.get_u32();
            let schema = cstr(&mut b)?;
            let table = cstr(&mut b)?;
            need(&b, 3)?;
            let replica_identity = b.get_u8();
            let n = b.get_i16();
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                need(&b, 1)?;
                let flags = b.get_u8();
                let name = cstr(&mut b)?;
                need(&b, 8)?;
                let type_oid = b.get_u32();
                let _typmod = b.get_i32();
                columns.push(RelColumn {
                    is_key: flags & 1 == 1,
                    name,
                    type_oid,
                });
            }
            let schema = if schema.is_empty() {
                "pg_catalog".to_string()
            } else {
                schema
            };
            Message::Relation(Relation {
                id,
                schema,
                table,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            need(&b, 5)?;
            let rel = b.get_u32();
            if b.get_u8() != b'N' {
                return Err(DecodeError("insert without new tuple"));
            }
            Message::Insert {
                rel,
                new: tuple(&mut b)?,
            }
        }
        b'U' => {
            need(&b, 5)?;
            let rel = b.get_u32();
            let mut kind = b.get_u8();
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(tuple(&mut b)?);
                need(&b, 1)?;
                kind = b.get_u8();
            }
            if kind != b'N' {
                return Err(DecodeError("update without new tuple"));
            }
            Message::Update {
                rel,
                old,
                new: tuple(&mut b)?,
            }
        }
        b'D' => {
            need(&b, 5)?;
            let rel = b.get_u32();
            let kind = b.get_u8();
            if kind != b'K' && kind != b'O' {
                return Err(DecodeError("delete without old tuple"));
            }
            Message::Delete {
                rel,
                old: tuple(&mut b)?,
            }
        }
        _ => Message::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn tup(b: &mut BytesMut, vals: &[Option<&str>]) {
        b.put_i16(vals.len() as i16);
        for v in vals {
            match v {
                None => b.put_u8(b'n'),
                Some(s) => {
                    b.put_u8(b't');
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
            }
        }
    }

    #[test]
    fn relation_and_changes() {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(16384);
        b.put_slice(b"public\0todos\0");
        b.put_u8(b'd');
        b.put_i16(2);
        b.put_u8(1);
        b.put_slice(b"id\0");
        b.put_u32(20);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(b"title\0");
        b.put_u32(25);
        b.put_i32(-1);
        let m = decode(b.freeze()).unwrap();
        let Message::Relation(r) = m else { panic!() };
        assert_eq!(r.schema, "public");
        assert_eq!(
            r.columns[0],
            RelColumn {
                is_key: true,
                name: "id".into(),
                type_oid: 20
            }
        );

        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(16384);
        b.put_u8(b'K');
        tup(&mut b, &[Some("1"), None]);
        b.put_u8(b'N');
        tup(&mut b, &[Some("2"), Some("x")]);
        let m = decode(b.freeze()).unwrap();
        assert_eq!(
            m,
            Message::Update {
                rel: 16384,
                old: Some(vec![Datum::Text("1".into()), Datum::Null]),
                new: vec![Datum::Text("2".into()), Datum::Text("x".into())]
            }
        );
        assert!(decode(Bytes::from_static(b"I\0\0")).is_err());
    }
}
