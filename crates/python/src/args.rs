//! The arguments each callback shape receives, built from an event (with the GIL held, on
//! the thread that runs the callbacks: the event loop's, or a sync client's callback thread).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use supa_realtime::{BroadcastMessage, ChannelStatus, ClientEvent, PostgresChange, PresenceEvent};

use crate::classes;
use crate::convert::{map_to_py, payload_to_py, presences_to_py, to_py};
use crate::errors::{exception_value, status_error_value};
use crate::handlers::{Event, Handler, Shape};

impl Handler {
    /// The callback's arguments for `ev`.
    pub(crate) fn args<'py>(&self, py: Python<'py>, ev: &Event) -> PyResult<Bound<'py, PyTuple>> {
        match (&self.shape, ev) {
            (Shape::BroadcastUser { with_message, .. }, Event::Broadcast(m)) => {
                let payload = payload_to_py(py, &m.payload)?;
                if *with_message {
                    PyTuple::new(py, [payload, broadcast_official(py, m, true)?])
                } else {
                    PyTuple::new(py, [payload])
                }
            }
            (Shape::BroadcastOfficial { .. }, Event::Broadcast(m)) => {
                PyTuple::new(py, [broadcast_official(py, m, false)?])
            }
            (Shape::PresenceSpec { .. }, Event::Presence(p)) => {
                PyTuple::new(py, [presence_spec(py, p)?])
            }
            (Shape::PresenceSync, _) => Ok(PyTuple::empty(py)),
            (Shape::PresenceJoin, Event::Presence(PresenceEvent::Join { key, current, new })) => {
                PyTuple::new(
                    py,
                    [
                        key.into_pyobject(py)?.into_any(),
                        presences_to_py(py, current)?.into_any(),
                        presences_to_py(py, new)?.into_any(),
                    ],
                )
            }
            (
                Shape::PresenceLeave,
                Event::Presence(PresenceEvent::Leave { key, current, left }),
            ) => PyTuple::new(
                py,
                [
                    key.into_pyobject(py)?.into_any(),
                    presences_to_py(py, current)?.into_any(),
                    presences_to_py(py, left)?.into_any(),
                ],
            ),
            (Shape::PostgresSpec, Event::Postgres(c)) => {
                PyTuple::new(py, [to_py(py, &c.to_json())?])
            }
            (Shape::PostgresOfficial, Event::Postgres(c)) => {
                PyTuple::new(py, [postgres_official(py, c)?])
            }
            (Shape::SystemSpec, Event::System(s)) => {
                let d = PyDict::new(py);
                d.set_item("extension", &s.extension)?;
                d.set_item("status", &s.status)?;
                d.set_item("message", &s.message)?;
                d.set_item("channel", s.channel.as_deref())?;
                PyTuple::new(py, [d])
            }
            (Shape::SystemOfficial, Event::System(s)) => {
                let v = classes::system_payload(py)?.call1((
                    s.channel.as_deref().unwrap_or_default(),
                    &s.extension,
                    &s.message,
                    &s.status,
                ))?;
                PyTuple::new(py, [v])
            }
            (Shape::SubscribeState, Event::Status(s)) => {
                let state = classes::subscribe_states(py)?.call1((s.as_str(),))?;
                let err = match s {
                    ChannelStatus::ChannelError { .. } => status_error_value(py, s)?,
                    _ => py.None().into_bound(py),
                };
                PyTuple::new(py, [state, err])
            }
            (Shape::ChannelError, Event::Status(s)) => {
                PyTuple::new(py, [status_error_value(py, s)?])
            }
            (Shape::ChannelError, Event::Error(e)) => PyTuple::new(py, [exception_value(py, e)?]),
            (
                Shape::ChannelClose { with_reason },
                Event::Status(ChannelStatus::Closed { reason }),
            ) => {
                if *with_reason {
                    PyTuple::new(py, [reason.as_deref().into_pyobject(py)?.into_any()])
                } else {
                    Ok(PyTuple::empty(py))
                }
            }
            (Shape::ClientOpen, _) => Ok(PyTuple::empty(py)),
            (Shape::ClientClose { nargs }, Event::Client(ClientEvent::Close { code, reason })) => {
                let code = code.into_pyobject(py)?.into_any();
                let reason = reason.into_pyobject(py)?.into_any();
                match nargs {
                    0 => Ok(PyTuple::empty(py)),
                    1 => PyTuple::new(py, [reason]),
                    _ => PyTuple::new(py, [code, reason]),
                }
            }
            (Shape::ClientError, Event::Client(ClientEvent::Error(e))) => {
                PyTuple::new(py, [exception_value(py, e)?])
            }
            _ => Ok(PyTuple::empty(py)),
        }
    }
}

/// `{"event", "payload", ["meta"]}` (official), plus `"type": "broadcast"` (realtime-js).
fn broadcast_official<'py>(
    py: Python<'py>,
    m: &BroadcastMessage,
    with_type: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    if with_type {
        d.set_item("type", "broadcast")?;
    }
    d.set_item("event", &m.event)?;
    d.set_item("payload", payload_to_py(py, &m.payload)?)?;
    if let Some(meta) = &m.meta {
        d.set_item("meta", to_py(py, meta)?)?;
    }
    Ok(d.into_any())
}

/// A join or leave for a spec-style presence callback: `presence` (the first presence that
/// changed), `key`, and the current and changed lists under both camelCase and snake_case names.
fn presence_change(
    py: Python<'_>,
    d: &Bound<'_, PyDict>,
    event: &str,
    key: &str,
    current: &[Arc<supa_realtime::Presence>],
    changed: &[Arc<supa_realtime::Presence>],
    (camel, snake): (&str, &str),
) -> PyResult<()> {
    d.set_item("event", event)?;
    d.set_item("key", key)?;
    let cur = presences_to_py(py, current)?;
    let changed_py = presences_to_py(py, changed)?;
    d.set_item(
        "presence",
        match changed.first() {
            Some(p) => map_to_py(py, p)?.into_any(),
            None => PyDict::new(py).into_any(),
        },
    )?;
    d.set_item("currentPresences", &cur)?;
    d.set_item(camel, &changed_py)?;
    d.set_item("current_presences", cur)?;
    d.set_item(snake, changed_py)?;
    Ok(())
}

/// The dict a spec-style presence callback receives.
fn presence_spec<'py>(py: Python<'py>, p: &PresenceEvent) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    match p {
        PresenceEvent::Sync { state } => {
            d.set_item("event", "sync")?;
            let presences = PyDict::new(py);
            for (k, v) in state.iter() {
                presences.set_item(k, presences_to_py(py, v)?)?;
            }
            d.set_item("presences", presences)?;
        }
        PresenceEvent::Join { key, current, new } => {
            presence_change(
                py,
                &d,
                "join",
                key,
                current,
                new,
                ("newPresences", "new_presences"),
            )?;
        }
        PresenceEvent::Leave { key, current, left } => {
            presence_change(
                py,
                &d,
                "leave",
                key,
                current,
                left,
                ("leftPresences", "left_presences"),
            )?;
        }
    }
    Ok(d.into_any())
}

/// `{"data": {schema, table, commit_timestamp, type, errors, columns, record?, old_record?}, "ids"}`.
fn postgres_official<'py>(py: Python<'py>, c: &PostgresChange) -> PyResult<Bound<'py, PyAny>> {
    let data = PyDict::new(py);
    data.set_item("schema", &c.schema)?;
    data.set_item("table", &c.table)?;
    data.set_item("commit_timestamp", c.commit_timestamp.as_deref())?;
    data.set_item("type", c.event_type.as_str())?;
    data.set_item(
        "errors",
        match &c.errors {
            Some(e) => PyList::new(py, e)?.into_any(),
            None => py.None().into_bound(py),
        },
    )?;
    let cols = PyList::empty(py);
    for (name, ty) in &c.columns {
        let col = PyDict::new(py);
        col.set_item("name", name)?;
        col.set_item("type", ty)?;
        cols.append(col)?;
    }
    data.set_item("columns", cols)?;
    use supa_realtime::PostgresEvent as E;
    if matches!(c.event_type, E::Insert | E::Update) {
        data.set_item("record", map_to_py(py, &c.new)?)?;
    }
    if matches!(c.event_type, E::Update | E::Delete) {
        data.set_item("old_record", map_to_py(py, &c.old)?)?;
    }
    let d = PyDict::new(py);
    d.set_item("data", data)?;
    d.set_item("ids", PyList::new(py, &c.ids)?)?;
    Ok(d.into_any())
}
