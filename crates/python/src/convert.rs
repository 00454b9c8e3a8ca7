//! JSON <-> Python objects. JSON is parsed in Rust (off the GIL, by the client crate);
//! values become Python objects here, in one attach per batch.

use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};
use supa_realtime::{BroadcastPayload, Presence};

/// A JSON value as a Python object (`dict`, `list`, `str`, `int`, `float`, `bool`, `None`).
pub(crate) fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => number(py, n)?,
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let list = PyList::empty(py);
            for x in a {
                list.append(to_py(py, x)?)?;
            }
            list.into_any()
        }
        Value::Object(m) => map_to_py(py, m)?.into_any(),
    })
}

fn number<'py>(py: Python<'py>, n: &Number) -> PyResult<Bound<'py, PyAny>> {
    if let Some(i) = n.as_i64() {
        Ok(i.into_pyobject(py)?.into_any())
    } else if let Some(u) = n.as_u64() {
        Ok(u.into_pyobject(py)?.into_any())
    } else {
        Ok(PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any())
    }
}

/// A JSON object as a `dict`.
pub(crate) fn map_to_py<'py>(
    py: Python<'py>,
    m: &Map<String, Value>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in m {
        d.set_item(k, to_py(py, v)?)?;
    }
    Ok(d)
}

/// A list of presences as a `list` of `dict`s.
pub(crate) fn presences_to_py<'py>(
    py: Python<'py>,
    ps: &[Arc<Presence>],
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for p in ps {
        list.append(map_to_py(py, p)?)?;
    }
    Ok(list)
}

/// A broadcast payload: JSON as Python objects, binary as `bytes`.
pub(crate) fn payload_to_py<'py>(
    py: Python<'py>,
    p: &BroadcastPayload,
) -> PyResult<Bound<'py, PyAny>> {
    match p {
        BroadcastPayload::Json(v) => to_py(py, v),
        BroadcastPayload::Binary(b) => Ok(PyBytes::new(py, b).into_any()),
    }
}

/// A Python object as JSON. Accepts what `json.dumps` accepts by default (dict with str
/// keys, list, tuple, str, int, float, bool, None); anything else raises `TypeError`.
pub(crate) fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        let f: f64 = obj.extract()?;
        return Ok(Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let f = f.value();
        return Number::from_f64(f).map(Value::Number).ok_or_else(|| {
            PyErr::new::<pyo3::exceptions::PyValueError, _>("NaN and infinity are not JSON")
        });
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.extract::<String>()?));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut m = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = match k.cast::<PyString>() {
                Ok(s) => s.extract::<String>()?,
                Err(_) => k.str()?.extract::<String>()?,
            };
            m.insert(key, from_py(&v)?);
        }
        return Ok(Value::Object(m));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l
            .iter()
            .map(|x| from_py(&x))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t
            .iter()
            .map(|x| from_py(&x))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    // Mappings that are not dicts (e.g. TypedDict instances are dicts; pydantic models are not).
    if obj.hasattr("items")? {
        let d = PyDict::new(obj.py());
        d.update(obj.cast()?)?;
        return from_py(d.as_any());
    }
    Err(PyTypeError::new_err(format!(
        "cannot send a {} as JSON",
        obj.get_type().name()?
    )))
}

/// A broadcast payload from Python: `bytes`/`bytearray`/`memoryview` are binary, anything
/// else JSON.
pub(crate) fn payload_from_py(obj: &Bound<'_, PyAny>) -> PyResult<BroadcastPayload> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(BroadcastPayload::Binary(bytes::Bytes::copy_from_slice(
            b.as_bytes(),
        )));
    }
    let name: String = obj.get_type().name()?.extract()?;
    if name == "bytearray" || name == "memoryview" {
        let b: Vec<u8> = obj
            .py()
            .import("builtins")?
            .getattr("bytes")?
            .call1((obj,))?
            .extract()?;
        return Ok(BroadcastPayload::Binary(bytes::Bytes::from(b)));
    }
    from_py(obj).map(BroadcastPayload::Json)
}
