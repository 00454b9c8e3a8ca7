//! Cluster mode: the same fan-out and presence measurements with the subscribers spread over
//! three server nodes that meet through Redis, against all of them on one node (with and
//! without Redis), in one run. A private redis-server (Debian's) on a free port, no
//! persistence, is started for it and stopped after.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fanout::{self, FanoutParams, Target};
use crate::{fmt_err, presence, report, Ctx, Results, Sizes};

pub struct Redis {
    child: Child,
    pub url: String,
}

impl Redis {
    pub async fn start() -> Res<Redis> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server (scripts/redis.sh installs it): {e}")
            })?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not listen".into());
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Ok(Redis {
            child,
            url: format!("redis://{addr}/"),
        })
    }

    /// The flags that make a server a node of this Redis's cluster named `prefix`.
    pub fn flags(&self, prefix: &str) -> Vec<String> {
        vec![
            "--redis-url".into(),
            self.url.clone(),
            "--redis-prefix".into(),
            prefix.into(),
        ]
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fan-out 1 x N and presence with the clients spread over three nodes through Redis, against
/// all of them on one node; the Redis hop alone is measured too (one node through Redis).
pub(crate) async fn run(ctx: &Ctx, s: &Sizes, mut p: FanoutParams, r: &mut Results) {
    let bar = &ctx.bar;
    let redis = match Redis::start().await {
        Ok(redis) => redis,
        Err(e) => {
            crate::say(bar, format!("cluster: skipped: {e}"));
            r.cluster_fanout
                .push(("cluster".into(), Err(format!("no Redis: {e}"))));
            return;
        }
    };
    let shape = format!("1x{}", s.fan_1);
    for (i, (label, nodes, redis_on)) in [
        ("1 node", 1usize, false),
        ("1 node + Redis", 1, true),
        ("3 nodes + Redis", 3, true),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!(
            "cluster-fanout-{shape}-v2-{}",
            label.replace([' ', '+'], "").to_lowercase()
        );
        bar.set_message(name.clone());
        let res: Res<fanout::FanoutResult> = async {
            let mut procs = Vec::new();
            for n in 0..nodes {
                let flags = if redis_on {
                    redis.flags(&format!("bench-fan-{i}"))
                } else {
                    Vec::new()
                };
                procs.push(ctx.server(&flags, &[], &format!("{name}-{n}")).await?);
            }
            let spread: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
            let out = fanout::run(Target::Server { v2: true }, &procs[0], &spread, &p, bar).await;
            for mut proc in procs {
                proc.stop();
            }
            out
        }
        .await;
        crate::say(
            bar,
            format!("{label}: {}", report::line_fanout(&name, &res)),
        );
        if let (0, Ok(first)) = (i, &res) {
            // The same paced rate for all three: half of one node's saturated rate.
            p.paced_rate = Some((first.deliveries_per_sec * 0.5) as u64);
        }
        r.cluster_fanout.push((label.to_owned(), fmt_err(res)));
        bar.inc(1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (i, (label, nodes)) in [("1 node", 1usize), ("3 nodes + Redis", 3)]
        .into_iter()
        .enumerate()
    {
        bar.set_message(format!("cluster presence: {label}"));
        let res: Res<presence::PresenceResult> = async {
            let mut procs = Vec::new();
            for n in 0..nodes {
                let flags = if nodes > 1 {
                    redis.flags(&format!("bench-presence-{i}"))
                } else {
                    Vec::new()
                };
                procs.push(
                    ctx.server(&flags, &[], &format!("cluster-presence-{i}-{n}"))
                        .await?,
                );
            }
            let spread: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
            let out = presence::run(&procs[0], &spread, s.presence, bar).await;
            for mut proc in procs {
                proc.stop();
            }
            out
        }
        .await;
        crate::say(
            bar,
            format!(
                "cluster presence {label}: {}",
                match &res {
                    Ok(x) => format!(
                        "{} clients, full state everywhere after {:.2} s",
                        x.clients, x.full_state_secs
                    ),
                    Err(e) => format!("failed: {e}"),
                }
            ),
        );
        r.cluster_presence.push((label.to_owned(), fmt_err(res)));
        bar.inc(1);
    }
}
