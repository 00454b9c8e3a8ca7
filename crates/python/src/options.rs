//! Python option dicts to the client crate's options. The Python layer normalises names
//! (spec and official spellings) before they get here; units here are milliseconds and
//! seconds as documented on each key.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use supa_realtime::{ChannelConfig, ClientOptions, OfflinePolicy, Overflow, Vsn};

fn get<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(d.get_item(key)?.filter(|v| !v.is_none()))
}

fn ms(v: &Bound<'_, PyAny>, key: &str) -> PyResult<Duration> {
    let f: f64 = v.extract()?;
    if !(f.is_finite() && f >= 0.0) {
        return Err(PyValueError::new_err(format!(
            "{key} must be a non-negative number of milliseconds"
        )));
    }
    Ok(Duration::from_secs_f64(f / 1000.0))
}

fn secs(v: &Bound<'_, PyAny>, key: &str) -> PyResult<Duration> {
    let f: f64 = v.extract()?;
    if !(f.is_finite() && f >= 0.0) {
        return Err(PyValueError::new_err(format!(
            "{key} must be a non-negative number of seconds"
        )));
    }
    Ok(Duration::from_secs_f64(f))
}

/// `"backpressure"`, `"drop_newest"` or `"drop_oldest"`.
fn overflow(v: &Bound<'_, PyAny>) -> PyResult<Overflow> {
    let s: String = v
        .extract()
        .map_err(|_| PyValueError::new_err("overflow must be a string"))?;
    Overflow::parse(&s).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown overflow {s:?}: use \"backpressure\" (the default: a slow callback slows the socket, nothing is lost), \"drop_newest\" or \"drop_oldest\""
        ))
    })
}

/// Client options from a normalised dict:
/// `auto_reconnect` (bool), `hb_interval` (ms), `heartbeat_timeout` (ms), `timeout` (ms),
/// `max_retries` (int or None = forever), `initial_backoff` (s), `max_backoff` (s),
/// `rejoin_backoff` (list of s), `vsn` ("1.0.0"/"2.0.0"), `params` (dict),
/// `access_token` (str), `event_queue_capacity` (int), `offline_buffer` (int; 0 = fail
/// sends at once while a channel is not joined), `offline_timeout` (s), `overflow`
/// (`backpressure` | `drop_newest` | `drop_oldest`), `event_queue_bytes`, `backlog_events`,
/// `backlog_bytes` (ints).
pub(crate) fn client_options(d: Option<&Bound<'_, PyDict>>) -> PyResult<ClientOptions> {
    let mut o = ClientOptions::default();
    let Some(d) = d else { return Ok(o) };
    if let Some(v) = get(d, "auto_reconnect")? {
        o.auto_reconnect = v.extract()?;
    }
    if let Some(v) = get(d, "hb_interval")? {
        o.hb_interval = ms(&v, "hb_interval")?.max(Duration::from_millis(10));
    }
    if let Some(v) = get(d, "heartbeat_timeout")? {
        o.heartbeat_timeout = ms(&v, "heartbeat_timeout")?;
    }
    if let Some(v) = get(d, "timeout")? {
        o.timeout = ms(&v, "timeout")?;
    }
    if let Some(v) = d.get_item("max_retries")? {
        o.max_retries = if v.is_none() {
            None
        } else {
            Some(v.extract()?)
        };
    }
    if let Some(v) = get(d, "initial_backoff")? {
        o.initial_backoff = secs(&v, "initial_backoff")?;
    }
    if let Some(v) = get(d, "max_backoff")? {
        o.max_backoff = secs(&v, "max_backoff")?;
    }
    if o.max_backoff < o.initial_backoff {
        o.max_backoff = o.initial_backoff;
    }
    if let Some(v) = get(d, "rejoin_backoff")? {
        let steps: Vec<f64> = v.extract()?;
        if !steps.is_empty() {
            o.rejoin_backoff = steps
                .into_iter()
                .map(|s| Duration::from_secs_f64(s.max(0.0)))
                .collect();
        }
    }
    if let Some(v) = get(d, "vsn")? {
        let s: String = v.extract()?;
        o.vsn = match s.as_str() {
            "1.0.0" | "1" => Vsn::V1,
            "2.0.0" | "2" => Vsn::V2,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown vsn {other:?}: use \"1.0.0\" or \"2.0.0\""
                )))
            }
        };
    }
    if let Some(v) = get(d, "params")? {
        let p = v.cast::<PyDict>()?;
        for (k, val) in p.iter() {
            let k: String = k.str()?.extract()?;
            if k == "apikey" || k == "vsn" {
                continue;
            }
            o.params.push((k, val.str()?.extract()?));
        }
    }
    if let Some(v) = get(d, "access_token")? {
        o.access_token = Some(v.extract()?);
    }
    if let Some(v) = get(d, "event_queue_capacity")? {
        o.event_queue_capacity = v.extract::<usize>()?.max(1);
    }
    if let Some(v) = get(d, "overflow")? {
        o.overflow = overflow(&v)?;
    }
    if let Some(v) = get(d, "event_queue_bytes")? {
        o.event_queue_bytes = v.extract::<usize>()?.max(1);
    }
    if let Some(v) = get(d, "backlog_events")? {
        o.backlog_events = v.extract::<usize>()?.max(1);
    }
    if let Some(v) = get(d, "backlog_bytes")? {
        o.backlog_bytes = v.extract::<usize>()?.max(1);
    }
    if let Some(v) = get(d, "offline_buffer")? {
        let capacity: usize = v.extract()?;
        let timeout = match get(d, "offline_timeout")? {
            Some(t) => secs(&t, "offline_timeout")?,
            None => Duration::from_secs(30),
        };
        o.offline_policy = if capacity == 0 {
            OfflinePolicy::Fail
        } else {
            OfflinePolicy::Buffer { capacity, timeout }
        };
    }
    Ok(o)
}

/// Channel config from the normalised dict `{"broadcast": {"self", "ack", "replay":
/// {"since", "limit"}}, "presence": {"key", "enabled"}, "private"}` plus the channel
/// options `auto_reconnect` (bool: rejoin after failures), `max_retries` (int or None =
/// forever: failures in a row before the channel gives up), `initial_backoff` (s: first
/// rejoin delay, doubling) and `hb_interval` (ms: the socket beats at the smallest
/// `hb_interval` of the client and its channels) and `overflow` (as the client's).
pub(crate) fn channel_config(d: Option<&Bound<'_, PyDict>>) -> PyResult<ChannelConfig> {
    let mut c = ChannelConfig::default();
    let Some(d) = d else { return Ok(c) };
    if let Some(b) = get(d, "broadcast")? {
        let b = b.cast::<PyDict>()?;
        if let Some(v) = get(b, "self")? {
            c.broadcast_self = v.is_truthy()?;
        }
        if let Some(v) = get(b, "ack")? {
            c.broadcast_ack = v.is_truthy()?;
        }
        if let Some(r) = get(b, "replay")? {
            let r = r.cast::<PyDict>()?;
            let since: i64 = get(r, "since")?
                .map(|v| v.extract())
                .transpose()?
                .unwrap_or(0);
            let limit: u32 = get(r, "limit")?
                .map(|v| v.extract())
                .transpose()?
                .unwrap_or(25);
            c.replay = Some((since, limit));
        }
    }
    if let Some(p) = get(d, "presence")? {
        let p = p.cast::<PyDict>()?;
        if let Some(v) = get(p, "key")? {
            let key: String = v.str()?.extract()?;
            if !key.is_empty() {
                c.presence_key = Some(key);
            }
        }
        if let Some(v) = get(p, "enabled")? {
            c.presence_enabled = v.is_truthy()?;
        }
    }
    if let Some(v) = get(d, "private")? {
        c.private = v.is_truthy()?;
    }
    if let Some(v) = get(d, "auto_reconnect")? {
        c.rejoin.auto_rejoin = v.extract()?;
    }
    if let Some(v) = get(d, "max_retries")? {
        c.rejoin.max_retries = Some(v.extract()?);
    }
    if let Some(v) = get(d, "initial_backoff")? {
        c.rejoin.initial_backoff = Some(secs(&v, "initial_backoff")?);
    }
    if let Some(v) = get(d, "hb_interval")? {
        c.hb_interval = Some(ms(&v, "hb_interval")?.max(Duration::from_millis(10)));
    }
    if let Some(v) = get(d, "overflow")? {
        c.overflow = Some(overflow(&v)?);
    }
    Ok(c)
}
