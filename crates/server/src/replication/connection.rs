//! The streaming-replication half of the PostgreSQL wire protocol.
//!
//! tokio-postgres cannot enter CopyBoth mode, so this file speaks the few messages needed on
//! top of `postgres-protocol` (frontend encoders and SCRAM-SHA-256): startup with
//! `replication=database`, password / MD5 / SCRAM authentication, simple queries
//! (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, ...), `START_REPLICATION ... LOGICAL`, then
//! `XLogData` / keepalive frames in and standby status updates out.
//! TLS is not spoken: use `sslmode=disable|prefer` URLs (a loopback or private-network database).

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Connection parameters, taken from the database URL.
#[derive(Debug, Clone)]
pub(crate) struct ConnParams {
    pub(crate) host: Host,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: Option<Vec<u8>>,
    pub(crate) dbname: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Host {
    Tcp(String),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl ConnParams {
    pub(crate) fn from_config(cfg: &tokio_postgres::Config) -> io::Result<ConnParams> {
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Host::Tcp(h.clone()),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => Host::Unix(p.clone()),
            None => Host::Tcp("localhost".into()),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg.get_user().unwrap_or("postgres").to_string();
        let dbname = cfg.get_dbname().unwrap_or(&user).to_string();
        Ok(ConnParams {
            host,
            port,
            user,
            password: cfg.get_password().map(<[u8]>::to_vec),
            dbname,
        })
    }
}

/// An error from the replication connection: I/O or a server `ErrorResponse`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One backend message: tag and body.
struct RawMessage {
    tag: u8,
    body: Bytes,
}

/// A frame received while streaming.
#[derive(Debug)]
pub(crate) enum ReplMessage {
    /// `XLogData`: one pgoutput message.
    XLogData { data: Bytes },
    /// Primary keepalive: the server's WAL end; `reply` asks for a status update now.
    Keepalive { wal_end: u64, reply: bool },
}

/// A connection in replication mode.
pub(crate) struct ReplicationConnection {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

fn server_error(body: &[u8]) -> ReplError {
    // fields: type byte + cstring, terminated by 0
    let mut code = String::new();
    let mut message = String::new();
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let kind = body[i];
        i += 1;
        let end = body[i..]
            .iter()
            .position(|b| *b == 0)
            .map_or(body.len(), |p| i + p);
        let text = String::from_utf8_lossy(&body[i..end]).into_owned();
        match kind {
            b'C' => code = text,
            b'M' => message = text,
            _ => {}
        }
        i = end + 1;
    }
    ReplError::Server { code, message }
}

impl ReplicationConnection {
    /// Connect, authenticate and wait for ReadyForQuery.
    pub(crate) async fn connect(params: &ConnParams, timeout: Duration) -> Result<Self, ReplError> {
        tokio::time::timeout(timeout, Self::connect_inner(params))
            .await
            .map_err(|_| {
                ReplError::Io(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            })?
    }

    async fn connect_inner(params: &ConnParams) -> Result<Self, ReplError> {
        let stream: Box<dyn Stream> = match &params.host {
            Host::Tcp(h) => {
                let s = tokio::net::TcpStream::connect((h.as_str(), params.port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            #[cfg(unix)]
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", params.port));
                Box::new(tokio::net::UnixStream::connect(path).await?)
            }
        };
        let mut conn = ReplicationConnection {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
        };
        let startup = [
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("replication", "database"),
            ("application_name", "supa_realtime_replication"),
            ("client_encoding", "UTF8"),
            // pgoutput renders values with the walsender's settings: fix the ones that shape
            // the text we type into JSON (see types.rs).
            ("DateStyle", "ISO, YMD"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "1"),
            ("bytea_output", "hex"),
        ];
        frontend::startup_message(startup.iter().copied(), &mut conn.wbuf)?;
        conn.flush().await?;
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            let msg = conn.read_message().await?;
            match msg.tag {
                b'R' => {
                    let mut body = msg.body.clone();
                    let code = body.get_i32();
                    let password = || {
                        params.password.clone().ok_or_else(|| {
                            ReplError::Protocol(
                                "the server asks for a password and the URL has none".into(),
                            )
                        })
                    };
                    match code {
                        0 => {}
                        3 => {
                            frontend::password_message(&password()?, &mut conn.wbuf)?;
                            conn.flush().await?;
                        }
                        5 => {
                            let mut salt = [0u8; 4];
                            body.copy_to_slice(&mut salt);
                            let hash = md5_hash(params.user.as_bytes(), &password()?, salt);
                            frontend::password_message(hash.as_bytes(), &mut conn.wbuf)?;
                            conn.flush().await?;
                        }
                        10 => {
                            let mechs: Vec<&[u8]> = body.split(|b| *b == 0).collect();
                            if !mechs.iter().any(|m| *m == sasl::SCRAM_SHA_256.as_bytes()) {
                                return Err(ReplError::Protocol(
                                    "no supported SASL mechanism".into(),
                                ));
                            }
                            let s = sasl::ScramSha256::new(
                                &password()?,
                                sasl::ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                s.message(),
                                &mut conn.wbuf,
                            )?;
                            conn.flush().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplError::Protocol("unexpected SASL continue".into())
                            })?;
                            s.update(&body)?;
                            frontend::sasl_response(s.message(), &mut conn.wbuf)?;
                            conn.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                ReplError::Protocol("unexpected SASL final".into())
                            })?;
                            s.finish(&body)?;
                        }
                        other => {
                            return Err(ReplError::Protocol(format!(
                                "unsupported authentication method {other}"
                            )))
                        }
                    }
                }
                b'E' => return Err(server_error(&msg.body)),
                b'Z' => return Ok(conn),
                _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        let buf = self.wbuf.split();
        self.stream.write_all(&buf).await?;
        self.stream.flush().await
    }

    async fn read_message(&mut self) -> Result<RawMessage, ReplError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize;
                if len < 4 {
                    return Err(ReplError::Protocol("bad message length".into()));
                }
                if self.rbuf.len() > len {
                    let mut frame = self.rbuf.split_to(len + 1);
                    let tag = frame[0];
                    frame.advance(5);
                    return Ok(RawMessage {
                        tag,
                        body: frame.freeze(),
                    });
                }
                self.rbuf.reserve(len + 1 - self.rbuf.len());
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(ReplError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the replication connection",
                )));
            }
        }
    }

    /// Run one simple query; returns the text rows.
    pub(crate) async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                b'D' => {
                    let mut b = msg.body.clone();
                    let n = b.get_i16();
                    let mut row = Vec::with_capacity(n.max(0) as usize);
                    for _ in 0..n {
                        let len = b.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            let v = b.split_to(len as usize);
                            row.push(Some(String::from_utf8_lossy(&v).into_owned()));
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(server_error(&msg.body)),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// `START_REPLICATION SLOT <slot> LOGICAL <lsn>` with pgoutput options; waits for CopyBoth.
    pub(crate) async fn start_logical(
        &mut self,
        slot: &str,
        lsn: u64,
        publication: &str,
    ) -> Result<(), ReplError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            quote_ident(slot),
            format_lsn(lsn),
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                b'W' => return Ok(()),
                b'E' => return Err(server_error(&msg.body)),
                b'N' => {}
                other => {
                    return Err(ReplError::Protocol(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }

    /// The next streaming frame.
    pub(crate) async fn next(&mut self) -> Result<ReplMessage, ReplError> {
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                b'd' => {
                    let mut b = msg.body;
                    if b.is_empty() {
                        continue;
                    }
                    match b.get_u8() {
                        b'w' => {
                            if b.len() < 24 {
                                return Err(ReplError::Protocol("short XLogData".into()));
                            }
                            let _wal_start = b.get_u64();
                            let _wal_end = b.get_u64();
                            let _ts = b.get_i64();
                            return Ok(ReplMessage::XLogData { data: b });
                        }
                        b'k' => {
                            if b.len() < 17 {
                                return Err(ReplError::Protocol("short keepalive".into()));
                            }
                            let wal_end = b.get_u64();
                            let _ts = b.get_i64();
                            let reply = b.get_u8() == 1;
                            return Ok(ReplMessage::Keepalive { wal_end, reply });
                        }
                        _ => continue,
                    }
                }
                b'E' => return Err(server_error(&msg.body)),
                b'c' | b'C' | b'Z' => {
                    return Err(ReplError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server ended the replication stream",
                    )))
                }
                _ => continue,
            }
        }
    }

    /// Standby status update: everything up to `flushed` is safely handled.
    pub(crate) async fn send_status(&mut self, flushed: u64, reply: bool) -> Result<(), ReplError> {
        let mut body = BytesMut::with_capacity(34);
        body.extend_from_slice(b"r");
        body.extend_from_slice(&flushed.to_be_bytes()); // written
        body.extend_from_slice(&flushed.to_be_bytes()); // flushed
        body.extend_from_slice(&flushed.to_be_bytes()); // applied
        body.extend_from_slice(&pg_now_micros().to_be_bytes());
        body.extend_from_slice(&[u8::from(reply)]);
        frontend::CopyData::new(body.freeze())?.write(&mut self.wbuf);
        self.flush().await?;
        Ok(())
    }
}

/// Microseconds since 2000-01-01 UTC (the PostgreSQL epoch).
fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    unix - 946_684_800_000_000
}

pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
pub(crate) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(format_lsn(0x1_0000_00AB), "1/AB");
        assert_eq!(parse_lsn("1/AB"), Some(0x1_0000_00AB));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("zz"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
