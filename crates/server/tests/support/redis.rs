//! A private redis-server per test (Debian's, installed by `scripts/redis.sh` or
//! `scripts/test.sh`), on a free port, so a test can stop and restart it without touching
//! any other test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    persist: bool,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A Redis, or None after a loud skip message (a failure with REQUIRE_REDIS=1).
pub fn require_redis(test: &str, persist: bool) -> Option<Redis> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("REQUIRE_REDIS").as_deref() != Ok("1"),
            "REQUIRE_REDIS=1 but redis-server is not installed (scripts/redis.sh installs it)"
        );
        eprintln!("\n!!!!!!!! SKIPPING {test}: redis-server not installed (run scripts/redis.sh) !!!!!!!!\n");
        return None;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("supa-realtime-test-redis-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("redis dir");
    let mut r = Redis {
        port,
        dir,
        persist,
        child: None,
    };
    r.start();
    Some(r)
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn ping(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    /// Start (again, on the same port). With persistence, an append-only file keeps the data
    /// across a graceful stop.
    pub fn start(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args(["--appendonly", if self.persist { "yes" } else { "no" }])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop gracefully (SHUTDOWN: the append-only file is flushed when persisting).
    pub fn stop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
