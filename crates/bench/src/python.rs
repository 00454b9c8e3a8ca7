//! Python clients: `supa_realtime` and the official `realtime`, each in its own Python
//! process, subscribed to the same broadcast stream in the same run (bench/py_client.py).
//! The server runs with `--slow-consumer-policy drop`, so a client that cannot keep up
//! loses frames instead of its socket, and each client's callback rate is what it can take.
//!
//! The stream comes from the server's REST endpoint, batches of [`PER_REQUEST`] broadcasts
//! posted back to back by [`SENDERS`] connections: one WebSocket sender formatting every
//! frame was itself the limit (about 200k/s, and so was the server's per-frame ingest with
//! three senders writing pre-serialized frames), so the fastest client measured the sender.
//! `sent_per_sec` is reported next to the clients' rates so a run where a client matches
//! it says so.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PyClientResult {
    pub available: bool,
    pub note: String,
    pub received: u64,
    pub per_sec: f64,
    pub rtt: Latency,
    pub rtt_samples: Vec<f64>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PyResult {
    pub sent: u64,
    pub sent_per_sec: f64,
    pub ours: PyClientResult,
    pub official: PyClientResult,
}

/// Sender connections of the flood (each a REST client posting batches back to back).
pub const SENDERS: usize = 3;
/// Broadcasts per `POST /api/broadcast` request.
pub const PER_REQUEST: usize = 1000;

/// Flood `topic` for `dur` through the server's REST endpoint from [`SENDERS`]
/// connections, each posting one pre-serialized batch of [`PER_REQUEST`] broadcasts again
/// and again (HTTP/1.1 keep-alive, one request in flight per connection). The server then
/// does what it does for any broadcast: fan it out to the topic's sockets. Returns the
/// broadcasts accepted (202) and the seconds the senders took.
async fn flood_topic(addr: &str, topic: &str, dur: Duration) -> Res<(u64, f64)> {
    let messages: Vec<serde_json::Value> = (0..PER_REQUEST)
        .map(|i| serde_json::json!({"topic": topic, "event": "b", "payload": {"i": i}}))
        .collect();
    let body = serde_json::json!({ "messages": messages }).to_string();
    let request = bytes::Bytes::from(format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\napikey: {ANON_KEY}\r\n\
         Authorization: Bearer {ANON_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..SENDERS {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut buf = Vec::with_capacity(4096);
            while start.elapsed() < dur {
                tcp.write_all(&request).await?;
                read_response(&mut tcp, &mut buf).await?;
                n += PER_REQUEST as u64;
            }
            Ok::<_, BoxError>(n)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await??;
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

/// Read one HTTP/1.1 response (status line, headers, `Content-Length` body); an error
/// unless it is 202.
async fn read_response(tcp: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Res<()> {
    buf.clear();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 4096];
        let k = tcp.read(&mut chunk).await?;
        if k == 0 {
            return Err("the server closed the REST connection".into());
        }
        buf.extend_from_slice(&chunk[..k]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let k = tcp.read(&mut chunk).await?;
        if k == 0 {
            return Err("the server closed the REST connection".into());
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    if !head.starts_with("http/1.1 202") {
        let status = head.lines().next().unwrap_or("").to_owned();
        let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
        return Err(format!("REST broadcast answered {status}: {body}").into());
    }
    Ok(())
}

struct PyProc {
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
}

impl PyProc {
    fn start(python: &Path, script: &Path, imp: &str, addr: &str, topic: &str) -> Res<PyProc> {
        let mut child = Command::new(python)
            .arg(script)
            .args([
                "--impl",
                imp,
                "--url",
                &format!("ws://{addr}/realtime/v1"),
                "--key",
                ANON_KEY,
                "--topic",
                topic,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std_mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            let mut err = String::new();
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                err.push_str(&l);
                err.push('\n');
            }
            if !err.is_empty() {
                let _ = tx2.send(format!(
                    "STDERR {}",
                    err.chars()
                        .rev()
                        .take(600)
                        .collect::<String>()
                        .chars()
                        .rev()
                        .collect::<String>()
                ));
            }
        });
        Ok(PyProc {
            child,
            stdin,
            lines: rx,
        })
    }

    fn expect(&self, timeout: Duration) -> Res<String> {
        let l = self
            .lines
            .recv_timeout(timeout)
            .map_err(|_| "python client did not answer")?;
        if let Some(err) = l.strip_prefix("STDERR ") {
            return Err(format!("python client failed: {err}").into());
        }
        Ok(l)
    }

    fn cmd(&mut self, c: &str, timeout: Duration) -> Res<serde_json::Value> {
        writeln!(self.stdin, "{c}")?;
        self.stdin.flush()?;
        Ok(serde_json::from_str(&self.expect(timeout)?)?)
    }
}

impl Drop for PyProc {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "EXIT");
        let _ = self.stdin.flush();
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn import_check(python: &Path, module: &str) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .ok()?;
    if out.status.success() {
        None
    } else {
        Some(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .to_owned(),
        )
    }
}

/// `perf`: `Some(("python-ours" | "python-official", dir))` records that client's process
/// during the flood.
pub async fn run(
    proc: &Proc,
    python: &Path,
    script: &Path,
    flood: Duration,
    rtts: usize,
    perf: Option<(String, std::path::PathBuf)>,
    bar: &ProgressBar,
) -> Res<PyResult> {
    let topic = "py-bench";
    let mut res = PyResult::default();
    let mut procs: Vec<(&str, Option<PyProc>)> = Vec::new();
    for imp in ["ours", "official"] {
        let module = if imp == "ours" {
            "supa_realtime"
        } else {
            "realtime"
        };
        let slot = if imp == "ours" {
            &mut res.ours
        } else {
            &mut res.official
        };
        if let Some(err) = import_check(python, module) {
            slot.note = if imp == "ours" {
                format!("n/a (package not built: {err})")
            } else {
                format!("n/a ({err})")
            };
            procs.push((imp, None));
            continue;
        }
        bar.set_message(format!("python: starting {imp}"));
        let p = PyProc::start(python, script, imp, &proc.addr, topic)?;
        let ready = p.expect(Duration::from_secs(30))?;
        if ready != "READY" {
            return Err(format!("{imp}: expected READY, got {ready}").into());
        }
        slot.available = true;
        procs.push((imp, Some(p)));
    }

    let recording = perf.as_ref().and_then(|(name, dir)| {
        let imp = name.trim_start_matches("python-");
        let pid = procs
            .iter()
            .find(|(i, _)| *i == imp)
            .and_then(|(_, p)| p.as_ref())
            .map(|p| p.child.id())?;
        crate::perf_record(dir, name, pid)
    });
    // the shared stream
    bar.set_message(format!("python: flooding {:.0} s", flood.as_secs_f64()));
    let (n, secs) = flood_topic(&proc.addr, topic, flood).await?;
    res.sent = n;
    res.sent_per_sec = n as f64 / secs;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Some((name, dir)) = &perf {
        if let Some(p) = crate::perf_finish(dir, name, recording) {
            crate::say(bar, format!("perf: {p}"));
        }
    }
    for (imp, p) in procs.iter_mut() {
        let Some(p) = p else { continue };
        let v = p.cmd("STOP", Duration::from_secs(30))?;
        let slot = if *imp == "ours" {
            &mut res.ours
        } else {
            &mut res.official
        };
        slot.received = v["count"].as_u64().unwrap_or(0);
        let secs = v["secs"].as_f64().unwrap_or(0.0);
        slot.per_sec = if secs > 0.0 {
            slot.received as f64 / secs
        } else {
            0.0
        };
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (imp, p) in procs.iter_mut() {
        let Some(p) = p else { continue };
        bar.set_message(format!("python: {rtts} round trips, {imp}"));
        let v = p.cmd(&format!("RTT {rtts}"), Duration::from_secs(120))?;
        let slot = if *imp == "ours" {
            &mut res.ours
        } else {
            &mut res.official
        };
        let samples: Vec<f64> = v["rtt_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        let mut h = histogram();
        for s in &samples {
            let _ = h.record(((s * 1000.0) as u64).max(1));
        }
        slot.rtt = Latency::of(&h);
        slot.rtt_samples = samples;
    }
    Ok(res)
}
