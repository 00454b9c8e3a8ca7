//! The messages of the feed's tasks: [`Command`]s to the owner task (owner.rs), from the
//! handles, the activator, retry timers and health; [`Job`]s from the owner to the
//! activator (activate.rs). Their own file so both ends import it and neither imports the
//! other.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::event::{Binding, Sink};
use super::subscribe::{CompileError, CompiledBinding};

/// What the owner task is asked to do.
pub(crate) enum Command {
    /// A channel subscribes (its id chosen by the caller, so an `Unsubscribe` can follow
    /// without waiting).
    Subscribe {
        id: u64,
        topic: String,
        claims: Value,
        bindings: Vec<Binding>,
        sink: Sink,
    },
    /// The channel left (its [`super::Subscription`] was dropped).
    Unsubscribe { id: u64 },
    /// The channel swapped its access token: these claims from now on.
    Claims { id: u64, claims: Value },
    /// The activator compiled a subscription (or failed to).
    Compiled {
        id: u64,
        ticket: u64,
        result: Result<Vec<CompiledBinding>, CompileError>,
    },
    /// A failed compilation may be tried again.
    RetryDue { id: u64, ticket: u64 },
    /// Health asks where the feed stands.
    Status { reply: oneshot::Sender<Value> },
}

/// What the owner asks of the activator.
pub(crate) enum Job {
    /// Compile `bindings` for `role`; answer with `Command::Compiled { id, ticket, .. }`.
    Compile {
        id: u64,
        ticket: u64,
        role: String,
        bindings: Arc<Vec<Binding>>,
    },
    /// A relation message changed this table: describe it again on next use.
    Forget { schema: String, table: String },
}
