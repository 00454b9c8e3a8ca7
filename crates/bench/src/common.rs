//! What every scenario shares: the clock, latency histograms, the server process, raw
//! WebSocket helpers and tokens.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The Supabase CLI's demo `anon` key (signed with [`JWT_SECRET`]).
pub const ANON_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";
/// The server's default JWT secret (the Supabase CLI's).
pub const JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, BoxError>;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the bench started: the timestamp carried in payloads (sender and
/// receivers share this process, so no clock sync is involved).
pub fn now_us() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A latency histogram in microseconds (1 µs .. 10 min, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)]
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

/// p50/p95/p99/max of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub count: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

/// Parse the number after the first `"t":` in a frame (JSON text, or the JSON payload inside
/// a binary broadcast). This is the only thing receivers read: the same work for the raw
/// baseline and for the server.
pub fn find_t(frame: &[u8]) -> Option<u64> {
    let pat = b"\"t\":";
    let pos = frame.windows(pat.len()).position(|w| w == pat)?;
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &frame[pos + pat.len()..] {
        if b.is_ascii_digit() {
            v = v * 10 + u64::from(b - b'0');
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// Raise this process's open-file limit (children inherit it).
pub fn raise_nofile() -> u64 {
    let want = 200_000;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(54400)
}

/// Resident set size of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of a process in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// A child process (the server, or the raw baseline server) on a loopback port.
pub struct Proc {
    child: Child,
    pub addr: String,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid())
    }

    /// Start `bin args..` and wait until `addr` accepts TCP connections.
    pub async fn start(
        name: &'static str,
        bin: &Path,
        args: &[String],
        env: &[(&str, String)],
        addr: String,
        log: Option<PathBuf>,
    ) -> Res<Proc> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        match log {
            Some(p) => {
                cmd.stderr(std::fs::File::create(p)?);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut proc = Proc { child, addr, name };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(&proc.addr).await.is_ok() {
                return Ok(proc);
            }
            if let Ok(Some(st)) = proc.child.try_wait() {
                return Err(format!("{name} exited at start ({st}); see its log").into());
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not listen on {}", proc.addr).into());
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
pub async fn http_get(addr: &str, path: &str) -> Res<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// A WebSocket to the server (`vsn` 1.0.0 or 2.0.0) or to any URL.
pub async fn ws_connect(url: &str) -> Res<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    Ok(ws)
}

pub fn server_ws_url(addr: &str, v2: bool) -> String {
    format!(
        "ws://{addr}/realtime/v1/websocket?apikey={ANON_KEY}&vsn={}",
        if v2 { "2.0.0" } else { "1.0.0" }
    )
}

/// A client text frame in either serializer.
pub fn client_frame(
    v2: bool,
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    if v2 {
        format!("[\"{join_ref}\",\"{msg_ref}\",\"{topic}\",\"{event}\",{payload}]")
    } else {
        format!("{{\"topic\":\"{topic}\",\"event\":\"{event}\",\"payload\":{payload},\"ref\":\"{msg_ref}\",\"join_ref\":\"{join_ref}\"}}")
    }
}

/// The join payload of a plain public broadcast channel.
pub fn join_payload(token: &str) -> String {
    format!("{{\"config\":{{\"broadcast\":{{\"self\":false,\"ack\":false}},\"presence\":{{\"key\":\"\",\"enabled\":false}},\"postgres_changes\":[],\"private\":false}},\"access_token\":\"{token}\"}}")
}

/// Join `topics` on one socket (refs `j<i>`) and wait for every `ok` reply.
pub async fn join_all(ws: &mut Ws, v2: bool, topics: &[String]) -> Res<()> {
    for (i, t) in topics.iter().enumerate() {
        let r = format!("j{i}");
        ws.feed(WsMessage::text(client_frame(
            v2,
            &r,
            &r,
            t,
            "phx_join",
            &join_payload(ANON_KEY),
        )))
        .await?;
    }
    ws.flush().await?;
    let mut ok = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ok < topics.len() {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "join timed out")?
            .ok_or("socket closed during join")??;
        if let WsMessage::Text(t) = m {
            if t.contains("phx_reply") {
                if t.contains("\"ok\"") {
                    ok += 1;
                } else {
                    return Err(format!("join refused: {t}").into());
                }
            }
        }
    }
    Ok(())
}

/// Sign an HS256 JWT with the server's default secret.
pub fn sign_token(claims: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let sig = match <Hmac<sha2::Sha256> as Mac>::new_from_slice(JWT_SECRET.as_bytes()) {
        Ok(mut mac) => {
            mac.update(signed.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

pub fn user_token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3 * 3600;
    sign_token(&serde_json::json!({"role": "authenticated", "sub": sub, "exp": exp}))
}

/// Run `f` over `items` with at most `limit` in flight; results in input order.
pub async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    futures_util::stream::iter(items.into_iter().map(f))
        .buffered(limit)
        .collect()
        .await
}
