//! The activator: compiles subscriptions for one database session, outside the feed's owner
//! task because compiling awaits the database (catalog lookups, filter casts).
//!
//! It owns the subscribe connection and the compile caches (types, tables), takes jobs in
//! order, and reports each outcome back to the owner as a [`Command::Compiled`] carrying the
//! ticket it was asked with. It decides nothing: whether the outcome still applies (the
//! channel left, swapped claims, the session ended) is the owner's call, made against the
//! ticket the subscription waits for. It ends when the owner drops its job sender (the
//! session ended).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::catalog::TableInfo;
use super::command::{Command, Job};
use super::subscribe::{self, CompileCtx};
use super::types::Kind;

/// Start an activator over `client`; it reports to `owner`.
pub(crate) fn spawn(
    client: Arc<Client>,
    publication: String,
    owner: mpsc::UnboundedSender<Command>,
) -> mpsc::UnboundedSender<Job> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(client, publication, rx, owner));
    tx
}

async fn run(
    client: Arc<Client>,
    publication: String,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    owner: mpsc::UnboundedSender<Command>,
) {
    let mut kinds: HashMap<u32, Kind> = HashMap::new();
    let mut tables: HashMap<(String, String), Arc<TableInfo>> = HashMap::new();
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Forget { schema, table } => {
                tables.remove(&(schema, table));
            }
            Job::Compile {
                id,
                ticket,
                role,
                bindings,
            } => {
                let mut ctx = CompileCtx {
                    client: &client,
                    publication: &publication,
                    kinds: &mut kinds,
                    tables: &mut tables,
                };
                let result = subscribe::compile(&mut ctx, &role, &bindings).await;
                if owner
                    .send(Command::Compiled { id, ticket, result })
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}
