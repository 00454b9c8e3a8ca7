//! A real PostgreSQL for tests: `DATABASE_URL`, else `scripts/postgres.sh` (which installs
//! and starts a throwaway cluster). Without one, tests print a loud SKIP, unless
//! `REQUIRE_POSTGRES=1`, where they fail.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tokio_postgres::NoTls;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run scripts/postgres.sh with `args` and optional env; return the URL on its last line.
pub fn postgres_sh(args: &[&str], env: &[(&str, &str)]) -> Option<String> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/postgres.sh"))
        .args(args)
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()?
        .strip_prefix("DATABASE_URL=")
        .map(str::to_string)
}

pub fn database_url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| postgres_sh(&["start"], &[]))
    })
    .clone()
}

/// The database URL, or None after a loud skip message (a failure with REQUIRE_POSTGRES=1).
pub fn require_db(test: &str) -> Option<String> {
    match database_url() {
        Some(u) => Some(u),
        None => {
            assert!(
                std::env::var("REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "REQUIRE_POSTGRES=1 but no PostgreSQL: set DATABASE_URL or make scripts/postgres.sh work"
            );
            eprintln!("\n!!!!!!!! SKIPPING {test}: no PostgreSQL (set DATABASE_URL or fix scripts/postgres.sh) !!!!!!!!\n");
            None
        }
    }
}

pub async fn db(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}
