//! Python bindings for the native streaming transport (`mbostream_h2serve`).
//!
//! The event loop watches `fileno()`, takes the events, and answers each call with `send` and
//! `finish`; nothing here waits, except `stop`, which releases the GIL.
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use mbostream_h2serve::{Config, Event, Server, Tls};

/// One event: `(kind, id, method, request, peer)`; kind is "call", "writable" or "closed", and
/// the last three are empty but for a call.
type PyEvent<'py> = (&'static str, u64, String, Bound<'py, PyBytes>, String);

#[pyclass(module = "mbostream_core._engine", name = "StreamServer", frozen)]
pub struct PyStreamServer {
    inner: Server,
}

#[pymethods]
impl PyStreamServer {
    #[new]
    #[pyo3(signature = (host, port, methods, *, max_request_bytes, high_water, low_water, max_concurrent_streams, keepalive_interval, keepalive_timeout, tls_cert_chain=None, tls_key=None, tls_client_ca=None, conflated_field=0, stamp_field=0, threads=1, realtime_priority=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        methods: Vec<String>,
        max_request_bytes: usize,
        high_water: usize,
        low_water: usize,
        max_concurrent_streams: u32,
        keepalive_interval: f64,
        keepalive_timeout: f64,
        tls_cert_chain: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
        tls_client_ca: Option<Vec<u8>>,
        conflated_field: u32,
        stamp_field: u32,
        threads: usize,
        realtime_priority: u8,
    ) -> PyResult<Self> {
        if conflated_field >= 1 << 29 || stamp_field >= 1 << 29 {
            return Err(PyValueError::new_err("conflated_field and stamp_field must be protobuf field numbers (below 2**29), or 0"));
        }
        for seconds in [keepalive_interval, keepalive_timeout] {
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
                return Err(PyValueError::new_err("keepalive_interval and keepalive_timeout must be finite seconds in (0, 86400]"));
            }
        }
        // TLS (PEM): a certificate chain and its key, and for mTLS the clients' CA.
        let tls = match (tls_cert_chain, tls_key) {
            (Some(cert_chain_pem), Some(key_pem)) => Some(Tls { cert_chain_pem, key_pem, client_ca_pem: tls_client_ca }),
            (None, None) if tls_client_ca.is_none() => None,
            _ => return Err(PyValueError::new_err("TLS needs tls_cert_chain and tls_key (tls_client_ca only with them)")),
        };
        let config = Config {
            host,
            port,
            methods,
            max_request_bytes,
            high_water,
            low_water,
            max_concurrent_streams,
            keepalive_interval: Duration::from_secs_f64(keepalive_interval),
            keepalive_timeout: Duration::from_secs_f64(keepalive_timeout),
            tls,
            conflated_field,
            stamp_field,
            threads,
            realtime_priority,
        };
        match Server::start(config) {
            Ok(inner) => Ok(PyStreamServer { inner }),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(PyValueError::new_err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(PyPermissionError::new_err(e.to_string())),
            Err(e) => Err(match e.raw_os_error() {
                Some(errno) => PyOSError::new_err((errno, e.to_string())),
                None => PyOSError::new_err(e.to_string()),
            }),
        }
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    /// Readable while events wait (for `loop.add_reader`).
    fn fileno(&self) -> i32 {
        self.inner.wake_fd()
    }

    fn take_events<'py>(&self, py: Python<'py>) -> Vec<PyEvent<'py>> {
        let empty = PyBytes::new(py, b"");
        self.inner
            .take_events()
            .into_iter()
            .map(|event| match event {
                Event::Call { id, method, request, peer } => ("call", id, method, PyBytes::new(py, &request), peer),
                Event::Writable { id } => ("writable", id, String::new(), empty.clone(), String::new()),
                Event::Closed { id } => ("closed", id, String::new(), empty.clone(), String::new()),
            })
            .collect()
    }

    /// Queues one message (written at the next `flush`); the call's queued bytes after it, or -1
    /// when the call is gone.
    fn send(&self, id: u64, message: &[u8]) -> i64 {
        self.inner.send(id, message).map_or(-1, |queued| queued as i64)
    }

    /// Subscribes call `id` to `topic` (versions above `version`, each followed by `tail`); False
    /// when the call is gone. With `combine` the call takes its topics' parts in one message; with
    /// `min_interval` (seconds) above 0 its topic messages are written at most once an interval.
    #[pyo3(signature = (id, topic, version, tail, combine=false, min_interval=0.0))]
    fn subscribe(&self, id: u64, topic: u64, version: u64, tail: &[u8], combine: bool, min_interval: f64) -> PyResult<bool> {
        if !(min_interval.is_finite() && (0.0..=86_400.0).contains(&min_interval)) {
            return Err(PyValueError::new_err("min_interval must be finite seconds in [0, 86400]"));
        }
        Ok(self.inner.subscribe(id, topic, version, tail, combine, Duration::from_secs_f64(min_interval)))
    }

    /// Hands version `version` of `topic` to every call subscribed there: `message` to plain calls,
    /// `part` stamped `stamp` to combining ones; replaces what a call has not written yet
    /// (conflated); written at the next `flush`. Returns how many calls it reached.
    #[pyo3(signature = (topic, version, message, part=b"".as_slice(), stamp=0))]
    fn publish(&self, topic: u64, version: u64, message: &[u8], part: &[u8], stamp: u64) -> usize {
        self.inner.publish(topic, version, message, part, stamp)
    }

    /// Topic messages replaced before they were written, since the start.
    #[getter]
    fn conflated(&self) -> u64 {
        self.inner.conflated()
    }

    /// Writes to the clients' sockets since the start (one a turn of a connection, whatever the
    /// number of calls' messages it carries).
    #[getter]
    fn writes(&self) -> u64 {
        self.inner.writes()
    }

    /// Has every message queued since the last flush written: one wake-up of the server's thread
    /// for a burst of sends.
    fn flush(&self) {
        self.inner.flush()
    }

    /// Ends a call with a gRPC status; False when the call is gone.
    fn finish(&self, id: u64, status: u32, message: &str) -> bool {
        self.inner.finish(id, status, message)
    }

    #[getter]
    fn open_calls(&self) -> usize {
        self.inner.open_calls()
    }

    /// GOAWAY, up to `grace` seconds for the open calls to be finished and written, then closes.
    fn stop(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        if !(grace.is_finite() && grace >= 0.0) {
            return Err(PyValueError::new_err("grace must be a finite number of seconds >= 0"));
        }
        py.detach(|| self.inner.stop(Duration::from_secs_f64(grace)));
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStreamServer>()
}
