//! Python clients: `supa_realtime` and the official `realtime`, each in its own Python
//! process, subscribed to the same broadcast stream in the same run (bench/py_client.py).
//! The server runs with `--slow-consumer-policy drop`, so a client that cannot keep up
//! loses frames instead of its socket, and each client's callback rate is what it can take.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures_util::SinkExt;
use indicatif::ProgressBar;
use tokio_tungstenite::tungstenite::Message as WsMessage;

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
    let mut ws = ws_connect(&server_ws_url(&proc.addr, false)).await?;
    let t = format!("realtime:{topic}");
    join_all(&mut ws, false, std::slice::from_ref(&t)).await?;
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < flood {
        for _ in 0..256 {
            n += 1;
            let body = format!(
                "{{\"type\":\"broadcast\",\"event\":\"b\",\"payload\":{{\"i\":{n},\"t\":{}}}}}",
                now_us()
            );
            ws.feed(WsMessage::text(client_frame(
                false,
                "j0",
                &n.to_string(),
                &t,
                "broadcast",
                &body,
            )))
            .await?;
        }
        ws.flush().await?;
    }
    res.sent = n;
    res.sent_per_sec = n as f64 / start.elapsed().as_secs_f64();
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
    drop(ws);
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
