//! Cluster mode: the same fan-out and presence measurements with the subscribers spread over
//! three server nodes that meet through Redis, against all of them on one node (with and
//! without Redis), in one run. A private redis-server (Debian's) on a free port, no
//! persistence, is started for it and stopped after.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

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
