//! An HTTP/2 gRPC server for server-streaming calls whose messages come from another thread;
//! plaintext, or TLS (ALPN `h2`) with an optional client CA (mTLS: a client certificate of that CA
//! is required), as the gRPC listeners' `ssl_server_credentials` are.
//!
//! It accepts calls to the methods it was given and hands each call's request to its owner as an
//! [`Event::Call`]; the owner answers with [`Server::send`] (one gRPC message each, written at the
//! next [`Server::flush`]) and ends the call with [`Server::finish`] (a status). It frames, flow-controls and writes; what the messages
//! mean is the owner's business. Everything network-facing runs on threads of its own (each a tokio
//! current-thread runtime), so the owner's thread only queues bytes.
//!
//! **Threads.** With `Config::threads` N above 1, accepted connections are dealt out to N threads in
//! turn, and each thread keeps its own calls, topics and lock (a shard): nothing is shared between
//! them but the listener and the owner's wake-up socket, so the writing (framing, flow control,
//! TLS, the syscalls: the per-client cost) uses up to N cores. A call's id says its shard
//! (`id % N`); [`Server::publish`] and [`Server::flush`] go to every shard.
//!
//! **Backpressure.** A call's queue counts the bytes HTTP/2 flow control has not taken yet. `send`
//! returns that count; once it reached `high_water`, an [`Event::Writable`] says when it fell back
//! to `low_water`, so an owner that waits for it never queues much more than `high_water` for a
//! client that does not read.
//!
//! **Topics: one message for many calls, conflated.** A call can also be subscribed to topics
//! ([`Server::subscribe`]); [`Server::publish`] hands one message to every call subscribed to a
//! topic at once (the owner's thread does one call for all of them). A call keeps one slot per
//! topic, not a queue: a message published before the previous one was written replaces it, and
//! the message written then says how many it replaced (its conflation count, appended as the
//! protobuf varint field `Config::conflated_field`), so a client that cannot keep up, or a thread
//! that cannot write to every client at the rate messages are published, gets fewer and fresher
//! messages instead of a queue of stale ones. What the per-call tail given at subscription
//! holds is appended last (the owner's per-call bytes).
//!
//! **Combining calls.** A call subscribed with `combine` gets what its slots hold as one message
//! instead of one a slot: the published `part`s concatenated (each a repeated field's entry),
//! then the smallest of their `stamp`s as the varint field `Config::stamp_field`, the sum of
//! their conflation counts, and the call's tail. So a client that asked for all its books in one
//! message a refresh is served by the same one-publish-for-all-calls path, the message made on
//! the transport's thread.
//!
//! **Paced calls.** A call subscribed with a `min_interval` has its topic messages written at most
//! once an interval (what its owner `send`s goes at once, and counts as a write): between two
//! writes its slots conflate, so a client that asked for ten updates a second gets ten, each the
//! newest, with the count of those it skipped, and its owner does nothing per message.
//!
//! **Gathered writes.** A call's writer takes every message ready when it runs (what `send`
//! queued, then the topics' pending ones) as one buffer, up to `MAX_BATCH`: a refresh's books for a
//! call leave in one DATA frame and one syscall. Written one at a time, each cost a `writev` and
//! the loopback TCP path behind it, three quarters of the thread's time.
//!
//! **One write a turn of a connection.** What h2 writes while it serves a connection once (the
//! frames of every call on it that were ready) leaves in one syscall at the end of that turn
//! (`coalesce`), not one a frame: a connection that carries many calls (a client process's
//! streams, or the clients behind an edge) costs a write a refresh, not a write a call.
//!
//! **Waking the owner.** Events wait in a queue; when the queue stops being empty, one byte is
//! written to a socket whose other end is [`Server::wake_fd`], so an event loop can watch it.
//! [`Server::take_events`] drains both.

mod coalesce;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::SendStream;
use http::{HeaderMap, HeaderValue, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};

/// gRPC status codes this crate sends on its own (the owner may send any).
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// What the server is told at start.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Full method paths served (`/package.Service/Method`); any other answers UNIMPLEMENTED.
    pub methods: Vec<String>,
    /// Largest request message accepted (RESOURCE_EXHAUSTED beyond).
    pub max_request_bytes: usize,
    /// Queued bytes of a call at which `send` callers should wait for [`Event::Writable`].
    pub high_water: usize,
    /// Queued bytes below which a call that reached `high_water` is writable again.
    pub low_water: usize,
    /// Concurrent calls one HTTP/2 connection may open.
    pub max_concurrent_streams: u32,
    /// How often a connection is PINGed, and how long its answer may take before the connection is
    /// dropped (its calls end, their subscriptions with them): the gRPC listeners' 30 s and 10 s.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// TLS on the listener; None: plaintext.
    pub tls: Option<Tls>,
    /// The protobuf field number (varint) a topic message's conflation count is appended as when
    /// it is not 0; 0: never appended.
    pub conflated_field: u32,
    /// The protobuf field number (varint) a combining call's message carries the smallest stamp
    /// of its parts as (when not 0); 0: never written.
    pub stamp_field: u32,
    /// Threads writing to the clients, 1 to [`MAX_THREADS`]: connections are dealt out to them in
    /// turn as they are accepted.
    pub threads: usize,
    /// The threads' real-time priority (`SCHED_FIFO`, 1 to [`MAX_REALTIME_PRIORITY`]), so that a
    /// thread woken by a publication runs at once instead of waiting for the thread that woke it to
    /// give up the core; 0: the process's own scheduling. Needs `CAP_SYS_NICE` or an
    /// `RLIMIT_RTPRIO` of at least this: [`Server::start`] fails with `PermissionDenied` otherwise.
    pub realtime_priority: u8,
}

/// The highest `SCHED_FIFO` priority Linux gives.
pub const MAX_REALTIME_PRIORITY: u8 = 99;

/// The most threads a server runs.
pub const MAX_THREADS: usize = 64;

/// The listener's certificate and key, and the CA of the clients' certificates when they must
/// present one (mTLS). PEM, as the gRPC listeners read them.
#[derive(Clone)]
pub struct Tls {
    /// The server's certificate, then its chain.
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Clients must present a certificate this CA issued; None: no client certificate is asked for.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls").field("client_ca", &self.client_ca_pem.is_some()).finish_non_exhaustive()
    }
}

/// How long a client has to finish the TLS handshake before its connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn invalid(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {error}"))
}

/// rustls' server configuration for [`Tls`]: TLS 1.2 and 1.3, ALPN `h2`; errors are InvalidInput.
fn server_tls(tls: &Tls) -> io::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certificates = |pem: &[u8], what: &str| -> io::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(what, e))?;
        if certs.is_empty() {
            return Err(invalid(what, "no PEM certificate"));
        }
        Ok(certs)
    };
    let chain = certificates(&tls.cert_chain_pem, "TLS certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| invalid("TLS private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS", e))?;
    let builder = match &tls.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(pem, "TLS client CA")? {
                roots.add(cert).map_err(|e| invalid("TLS client CA", e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid("TLS client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| invalid("TLS certificate and key", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// What the owner is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A new call: its id, method path, request message (unframed) and the client's address as
    /// gRPC spells it (`ipv4:127.0.0.1:PORT`, `ipv6:[::1]:PORT`).
    Call { id: u64, method: String, request: Bytes, peer: String },
    /// A call that had reached `high_water` fell back to `low_water`.
    Writable { id: u64 },
    /// The client went away (cancelled, reset, or its connection closed) before `finish`.
    Closed { id: u64 },
}

/// A call's slot for one topic.
struct Slot {
    /// The per-call bytes appended to each of the topic's messages (not a combining call's).
    tail: Bytes,
    /// The newest version published to (or sent on) this call; older ones are ignored.
    version: u64,
    /// The newest message not written yet (for a combining call, its part).
    pending: Option<Pending>,
}

struct Pending {
    body: Bytes,
    stamp: u64,
    /// Messages of the topic it replaced before it was written.
    replaced: u64,
}

struct Outgoing {
    frames: VecDeque<Bytes>,
    /// The topics the call is subscribed to, and the order their slots got a message in.
    slots: IdMap<Slot>,
    ready: VecDeque<u64>,
    /// A combining call's tail (its slots' messages leave as one): see [`Server::subscribe`].
    combined: Option<Bytes>,
    /// A paced call's interval between writes, and when its topic messages may be written next.
    pace: Option<(Duration, Instant)>,
    /// When the call's writer last took messages to write.
    last_write: Option<Instant>,
    queued: usize,
    finish: Option<(u32, String)>,
    blocked: bool,
    /// Messages queued since the last flush (the call is in `State::unflushed`).
    unflushed: bool,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct State {
    events: Vec<Event>,
    calls: IdMap<Outgoing>,
    next_id: u64,
    /// Calls with messages queued since the last flush.
    unflushed: Vec<u64>,
    /// Calls flushed whose writers the shard's thread has not woken yet (`wake_writers`).
    flushed: Vec<u64>,
    /// The calls subscribed to each topic.
    topics: IdMap<Vec<u64>>,
    /// Topic messages replaced before they were written, since the start.
    conflated: u64,
}

/// Keys the server assigns itself (call ids, topics), hashed by one multiplication instead of the
/// standard library's SipHash: `publish` looks up a call and its slot for every call subscribed
/// to a topic, at every refresh (4,000 pairs a refresh with 1,000 combined clients of 4 books).
/// No client chooses these keys, so there is nothing to flood.
type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the multiplication by 2^64 / φ spreads consecutive ids over the
        // high bits (the table's tags) and, being odd, keeps the low bits (its buckets) distinct.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One thread's calls and topics (a shard), behind a lock of its own.
struct Shared {
    state: Mutex<State>,
    /// This shard's index and the number of shards: its calls' ids are `n * count + index`.
    index: u64,
    count: u64,
    wake: UnixStream,
    stop: watch::Sender<bool>,
    config: Config,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Writes to this shard's sockets since the start.
    writes: Arc<AtomicU64>,
    /// Notified by [`Server::flush`] when `State::flushed` has calls to wake.
    flushed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push_event(&self, state: &mut State, event: Event) {
        if state.events.is_empty() {
            // Non-blocking: a full socket already says "look".
            let _ = (&self.wake).write(&[1]);
        }
        state.events.push(event);
    }
}

/// The running server; [`Server::stop`] (or dropping it) stops its threads.
pub struct Server {
    shards: Vec<Arc<Shared>>,
    wake_read: UnixStream,
    port: u16,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Server {
    /// Binds (errors come back here, not later) and starts the server's thread.
    pub fn start(mut config: Config) -> io::Result<Server> {
        if config.methods.is_empty() || config.low_water > config.high_water || config.max_concurrent_streams == 0 || !(1..=MAX_THREADS).contains(&config.threads) || config.realtime_priority > MAX_REALTIME_PRIORITY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("methods must not be empty, low_water <= high_water, max_concurrent_streams >= 1, threads in 1..={MAX_THREADS}, realtime_priority in 0..={MAX_REALTIME_PRIORITY}"),
            ));
        }
        // The PEM (the key with it) is not kept once rustls holds what it needs.
        let tls = config.tls.take().as_ref().map(server_tls).transpose()?.map(tokio_rustls::TlsAcceptor::from);
        let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (wake_read, wake) = UnixStream::pair()?;
        wake_read.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let count = config.threads;
        let mut shards = Vec::with_capacity(count);
        for index in 0..count {
            let (stop, _) = watch::channel(false);
            let state = Mutex::new(State::default());
            let wake = wake.try_clone()?;
            shards.push(Arc::new(Shared { state, index: index as u64, count: count as u64, wake, stop, config: config.clone(), tls: tls.clone(), writes: Arc::default(), flushed: Notify::new() }));
        }
        // Each thread takes the connections handed to it; the first also accepts them.
        let mut inboxes = Vec::with_capacity(count);
        let mut receivers = Vec::with_capacity(count);
        for _ in 0..count {
            let (send, receive) = mpsc::unbounded_channel();
            inboxes.push(send);
            receivers.push(receive);
        }
        let server = Server { shards: shards.clone(), wake_read, port, threads: Mutex::new(Vec::with_capacity(count)) };
        let mut listener = Some(listener);
        for (shared, inbox) in shards.into_iter().zip(receivers) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let listener = listener.take().map(|listener| (listener, inboxes.clone()));
            let name = if count == 1 { "mbostream-h2".to_owned() } else { format!("mbostream-h2-{}", shared.index) };
            let thread = std::thread::Builder::new().name(name).spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    if let Some((listener, inboxes)) = listener {
                        if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                            tokio::task::spawn_local(accept(listener, inboxes, shared.clone()));
                        }
                    }
                    tokio::task::spawn_local(wake_writers(shared.clone()));
                    serve(inbox, shared).await;
                });
            })?;
            let scheduled = set_realtime(&thread, config.realtime_priority);
            server.threads.lock().unwrap_or_else(|p| p.into_inner()).push(thread);
            scheduled?; // dropping the server stops the threads started so far
        }
        Ok(server)
    }

    /// The shard that holds call `id`.
    fn shard(&self, id: u64) -> &Shared {
        &self.shards[(id % self.shards.len() as u64) as usize]
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Readable when events are waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.wake_read.as_raw_fd()
    }

    /// The events so far, oldest first.
    pub fn take_events(&self) -> Vec<Event> {
        let mut sink = [0u8; 256];
        while matches!((&self.wake_read).read(&mut sink), Ok(n) if n > 0) {}
        // Drained before the shards are read: a shard whose queue was empty when it got an event
        // writes a byte, so an event taken here or not, the owner looks again.
        let mut events = Vec::new();
        for shared in &self.shards {
            events.append(&mut shared.lock().events);
        }
        events
    }

    /// Queues one message of call `id`; the call's queued bytes after it, or None when the call is
    /// gone (finished, or closed by the client). It is written once [`Server::flush`] is called:
    /// the owner sends a burst, then flushes once, so the server's thread is woken once a burst,
    /// not once a message (on a shared core, each wake-up can be a context switch).
    pub fn send(&self, id: u64, message: &[u8]) -> Option<usize> {
        let shared = self.shard(id);
        let mut state = shared.lock();
        let call = state.calls.get_mut(&id)?;
        if call.finish.is_some() {
            return None;
        }
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.put_u8(0);
        frame.put_u32(message.len() as u32);
        frame.put_slice(message);
        call.queued += frame.len();
        call.frames.push_back(frame.freeze());
        if call.queued >= shared.config.high_water {
            call.blocked = true;
        }
        let queued = call.queued;
        if !call.unflushed {
            call.unflushed = true;
            state.unflushed.push(id);
        }
        Some(queued)
    }

    /// Subscribes call `id` to `topic`: from now on it gets each message published there with a
    /// version above `version` (the one the owner already sent it), followed by `tail`. False
    /// when the call is gone. Subscribing again replaces the tail and the version.
    ///
    /// With `combine` the call becomes a combining one (for all its topics): what its slots hold
    /// when its writer runs leaves as one message, the published parts followed by the smallest
    /// stamp, the conflation count summed over them, and `tail` once. With a `min_interval` above
    /// zero it becomes a paced one: its topic messages are written at most once an interval, the
    /// first an interval after its last write.
    pub fn subscribe(&self, id: u64, topic: u64, version: u64, tail: &[u8], combine: bool, min_interval: Duration) -> bool {
        let mut state = self.shard(id).lock();
        let Some(call) = state.calls.get_mut(&id) else { return false };
        if call.finish.is_some() {
            return false;
        }
        let tail = Bytes::copy_from_slice(tail);
        if combine {
            call.combined = Some(tail.clone());
        }
        if !min_interval.is_zero() {
            let next = call.last_write.map_or_else(Instant::now, |at| at + min_interval);
            call.pace = Some((min_interval, next));
        }
        let slot = Slot { tail, version, pending: None };
        if call.slots.insert(topic, slot).is_none() {
            state.topics.entry(topic).or_default().push(id);
        }
        true
    }

    /// Publishes version `version` of `topic` to every call subscribed there (written at the next
    /// [`Server::flush`]): `message` to plain calls, `part` stamped `stamp` to combining ones. A
    /// call whose slot still holds an earlier message gets this one instead, counted as
    /// conflated. Returns how many calls it reached.
    pub fn publish(&self, topic: u64, version: u64, message: &[u8], part: &[u8], stamp: u64) -> usize {
        // The bytes, copied once for every shard (each only when a call needs it).
        let (mut message_copy, mut part_copy) = (None, None);
        let mut reached = 0;
        for shared in &self.shards {
            let mut guard = shared.lock();
            let State { topics, calls, unflushed, conflated, .. } = &mut *guard;
            let Some(ids) = topics.get(&topic) else { continue };
            for id in ids {
                let Some(call) = calls.get_mut(id) else { continue };
                // A paced call whose slots already hold a message has a writer that either runs
                // now or sleeps until its next write is due, and takes this one then: waking it for
                // every publication, only to find it not due, cost the transport's thread a wake-up
                // a call and a refresh.
                let wake = call.pace.is_none() || call.ready.is_empty();
                let Some(slot) = call.slots.get_mut(&topic) else { continue };
                if call.finish.is_some() || version <= slot.version {
                    continue;
                }
                slot.version = version;
                let body = match call.combined {
                    Some(_) => part_copy.get_or_insert_with(|| Bytes::copy_from_slice(part)),
                    None => message_copy.get_or_insert_with(|| Bytes::copy_from_slice(message)),
                };
                match &mut slot.pending {
                    Some(pending) => {
                        *pending = Pending { body: body.clone(), stamp, replaced: pending.replaced + 1 };
                        *conflated += 1;
                    }
                    None => {
                        slot.pending = Some(Pending { body: body.clone(), stamp, replaced: 0 });
                        call.ready.push_back(topic);
                    }
                }
                if wake && !call.unflushed {
                    call.unflushed = true;
                    unflushed.push(*id);
                }
                reached += 1;
            }
        }
        reached
    }

    /// Topic messages replaced before they were written, since the start.
    pub fn conflated(&self) -> u64 {
        self.shards.iter().map(|shared| shared.lock().conflated).sum()
    }

    /// Writes to the clients' sockets since the start (a turn of a connection makes one, whatever
    /// number of calls' messages it carries; TLS writes its records under it).
    pub fn writes(&self) -> u64 {
        self.shards.iter().map(|shared| shared.writes.load(Ordering::Relaxed)).sum()
    }

    /// Wakes the writers of every call with messages queued since the last flush: the shard's
    /// thread wakes them (`wake_writers`), all of them before any connection writes, so a
    /// connection with many of them writes once.
    pub fn flush(&self) {
        for shared in &self.shards {
            let mut state = shared.lock();
            if state.unflushed.is_empty() {
                continue;
            }
            let ids = std::mem::take(&mut state.unflushed);
            state.flushed.extend(ids);
            drop(state);
            shared.flushed.notify_one();
        }
    }

    /// Ends call `id` with a status once its queued messages are written; false when it is gone.
    pub fn finish(&self, id: u64, status: u32, message: &str) -> bool {
        let mut state = self.shard(id).lock();
        match state.calls.get_mut(&id) {
            Some(call) if call.finish.is_none() => {
                call.finish = Some((status, message.to_owned()));
                call.notify.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Calls open now (not yet finished and written, nor closed).
    pub fn open_calls(&self) -> usize {
        self.shards.iter().map(|shared| shared.lock().calls.len()).sum()
    }

    /// Stops accepting, tells clients to go (GOAWAY), waits up to `grace` for the open calls to
    /// be finished and written, then closes everything and joins the threads.
    pub fn stop(&self, grace: Duration) {
        for shared in &self.shards {
            shared.stop.send_replace(true);
        }
        let deadline = Instant::now() + grace;
        while self.open_calls() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for shared in &self.shards {
            // Calls still open are ended as the threads stop: a status, not a hang.
            let mut state = shared.lock();
            for call in state.calls.values_mut() {
                if call.finish.is_none() {
                    call.finish = Some((code::UNAVAILABLE, "the server is shutting down".into()));
                }
                call.notify.notify_one();
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            // A thread ends once its connections have closed (bounded below).
            let _ = thread.join();
        }
    }
}

/// Puts `thread` under `SCHED_FIFO` at `priority` (0: leaves it as it is).
fn set_realtime(thread: &JoinHandle<()>, priority: u8) -> io::Result<()> {
    use std::os::unix::thread::JoinHandleExt;
    if priority == 0 {
        return Ok(());
    }
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: the handle's thread has not been joined, so its pthread_t is valid; param outlives the call.
    let error = unsafe { libc::pthread_setschedparam(thread.as_pthread_t(), libc::SCHED_FIFO, &param) };
    if error == 0 {
        return Ok(());
    }
    let cause = io::Error::from_raw_os_error(error);
    Err(io::Error::new(cause.kind(), format!("SCHED_FIFO priority {priority} for the transport's threads: {cause} (it needs CAP_SYS_NICE, or an RLIMIT_RTPRIO of at least {priority})")))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// Bytes of a call h2 holds before they reach the connection (its default is ~400 KB): kept small
/// so that what a slow connection cannot take waits in the call's slots, where it conflates, and
/// not in a buffer ahead of them.
const MAX_SEND_BUFFER: usize = 32 * 1024;
/// How long connections get, once told to go, to finish writing before they are dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Pings the client every `interval`; returns once one PING went unanswered within `timeout`.
async fn keepalive(mut ping_pong: h2::PingPong, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// A connection handed to a thread: the socket (non-blocking) and the client's address.
type Accepted = (std::net::TcpStream, SocketAddr);

/// Accepts connections until the server stops, dealing them out to the threads' inboxes in turn.
async fn accept(listener: tokio::net::TcpListener, inboxes: Vec<mpsc::UnboundedSender<Accepted>>, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut next = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, peer)) = accepted else { continue };
                // Left non-blocking; registered again on the thread that takes it.
                let Ok(socket) = socket.into_std() else { continue };
                let _ = inboxes[next].send((socket, peer));
                next = (next + 1) % inboxes.len();
            }
            _ = stop.wait_for(|stopping| *stopping) => break,
        }
    }
}

/// Wakes the writers of the calls [`Server::flush`] flushed, from the shard's own thread: woken
/// here, they all run before the connections they wake (a thread's tasks run in the order they
/// were woken), so each connection then writes every call's frames at once (`coalesce`). Woken
/// from the owner's thread one by one, a writer and its connection took turns: a write a call.
async fn wake_writers(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = shared.flushed.notified() => {}
            _ = stop.wait_for(|stopping| *stopping) => return,
        }
        let mut state = shared.lock();
        let ids = std::mem::take(&mut state.flushed);
        for id in ids {
            if let Some(call) = state.calls.get_mut(&id) {
                call.unflushed = false;
                call.notify.notify_one();
            }
        }
    }
}

/// One thread's connections: those handed to it, served until the server stops, then given
/// CLOSE_GRACE to finish.
async fn serve(mut inbox: mpsc::UnboundedReceiver<Accepted>, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut connections = Vec::new();
    loop {
        tokio::select! {
            handed = inbox.recv() => {
                let Some((socket, peer)) = handed else { break };
                let Ok(socket) = tokio::net::TcpStream::from_std(socket) else { continue };
                connections.retain(|c: &tokio::task::JoinHandle<()>| !c.is_finished());
                connections.push(tokio::task::spawn_local(open(socket, peer, shared.clone())));
            }
            _ = stop.wait_for(|stopping| *stopping) => break,
        }
    }
    drop(inbox);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        for connection in connections {
            let _ = connection.await;
        }
    })
    .await;
}

fn peer_name(peer: SocketAddr) -> String {
    match peer {
        SocketAddr::V4(a) => format!("ipv4:{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("ipv6:[{}]:{}", a.ip(), a.port()),
    }
}

/// An accepted connection: its TLS handshake first when the listener has TLS (bounded in time;
/// a failed one just closes the socket), then HTTP/2.
async fn open(socket: tokio::net::TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = socket.set_nodelay(true);
    let Some(acceptor) = shared.tls.clone() else {
        return connection(socket, peer, shared).await;
    };
    let mut stop = shared.stop.subscribe();
    let tls = tokio::select! {
        handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)) => match handshake {
            Ok(Ok(tls)) => tls,
            _ => return,
        },
        _ = stop.wait_for(|stopping| *stopping) => return,
    };
    connection(tls, peer, shared).await
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(socket: S, peer: SocketAddr, shared: Arc<Shared>) {
    let peer = peer_name(peer);
    let mut stop = shared.stop.subscribe();
    let (socket, flusher) = coalesce::coalescing(socket, shared.writes.clone());
    // After each turn of the connection (the handshake's, then each of h2's), what it wrote goes
    // out in one write; a socket that cannot take it wakes the task when it can.
    let write_out_failed = |cx: &mut std::task::Context<'_>| matches!(flusher.poll_write_out(cx), Poll::Ready(Err(_)));
    let mut handshake = std::pin::pin!(h2::server::Builder::new()
        .max_concurrent_streams(shared.config.max_concurrent_streams)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(socket));
    let handshake = std::future::poll_fn(|cx| {
        let done = handshake.as_mut().poll(cx);
        if write_out_failed(cx) {
            return Poll::Ready(None);
        }
        done.map(Some)
    });
    let mut conn = tokio::select! {
        conn = handshake => match conn { Some(Ok(conn)) => conn, _ => return },
        _ = stop.wait_for(|stopping| *stopping) => return,
    };
    let mut stopping = false;
    let (interval, timeout) = (shared.config.keepalive_interval, shared.config.keepalive_timeout);
    let alive = conn.ping_pong().map(|ping_pong| keepalive(ping_pong, interval, timeout));
    tokio::pin!(alive);
    loop {
        let turn = std::future::poll_fn(|cx| {
            let next = conn.poll_accept(cx);
            if write_out_failed(cx) {
                return Poll::Ready(None);
            }
            next
        });
        tokio::select! {
            _ = async { alive.as_mut().as_pin_mut().expect("checked").await }, if alive.is_some() => break,
            next = turn => match next {
                Some(Ok((request, respond))) => {
                    if stopping {
                        trailers_only(respond, code::UNAVAILABLE, "the server is shutting down");
                    } else {
                        tokio::task::spawn_local(call(request, respond, peer.clone(), shared.clone()));
                    }
                }
                _ => break,
            },
            _ = stop.wait_for(|stopping| *stopping), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
        }
    }
}

/// `grpc-message`: percent-encoded outside printable ASCII, and `%` itself.
fn grpc_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn status_headers(status: u32, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", HeaderValue::from(status));
    if !message.is_empty() {
        headers.insert("grpc-message", grpc_message(message));
    }
    headers
}

/// A call ended before any message: one HEADERS frame with the status (gRPC's Trailers-Only).
fn trailers_only(mut respond: SendResponse<Bytes>, status: u32, message: &str) {
    let mut response = Response::builder().status(200).header("content-type", "application/grpc").body(()).unwrap();
    response.headers_mut().extend(status_headers(status, message));
    let _ = respond.send_response(response, true);
}

/// What a request's body holds: the one request message, unframed.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Message(Bytes),
    Compressed,
    TooLarge,
    Malformed,
}

/// Unframes a unary request (one length-prefixed message).
pub fn unframe(body: &[u8], max: usize) -> Request {
    if body.len() < 5 {
        return Request::Malformed;
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if length > max {
        return Request::TooLarge;
    }
    if body[0] != 0 {
        return if body[0] == 1 { Request::Compressed } else { Request::Malformed };
    }
    if body.len() != 5 + length {
        return Request::Malformed;
    }
    Request::Message(Bytes::copy_from_slice(&body[5..]))
}

async fn call(request: http::Request<h2::RecvStream>, respond: SendResponse<Bytes>, peer: String, shared: Arc<Shared>) {
    let (parts, mut body) = request.into_parts();
    let method = parts.uri.path().to_owned();
    if !shared.config.methods.iter().any(|m| *m == method) {
        return trailers_only(respond, code::UNIMPLEMENTED, &format!("method {method} is not served on this port"));
    }
    let grpc = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"));
    if parts.method != http::Method::POST || !grpc {
        let mut respond = respond;
        let response = Response::builder().status(415).body(()).unwrap();
        let _ = respond.send_response(response, true);
        return;
    }
    let max = shared.config.max_request_bytes;
    let mut buffer = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        buffer.extend_from_slice(&chunk);
        if buffer.len() > max + 5 {
            return trailers_only(respond, code::RESOURCE_EXHAUSTED, &format!("request larger than max ({max} bytes)"));
        }
    }
    let message = match unframe(&buffer, max) {
        Request::Message(message) => message,
        Request::Compressed => return trailers_only(respond, code::UNIMPLEMENTED, "compressed requests are not supported on this port"),
        Request::TooLarge => return trailers_only(respond, code::RESOURCE_EXHAUSTED, &format!("request larger than max ({max} bytes)")),
        Request::Malformed => return trailers_only(respond, code::INVALID_ARGUMENT, "the request is not one gRPC message"),
    };
    let mut respond = respond;
    let response = Response::builder().status(200).header("content-type", "application/grpc").body(()).unwrap();
    let Ok(stream) = respond.send_response(response, false) else { return };
    let notify = Arc::new(Notify::new());
    let id = {
        let mut state = shared.lock();
        state.next_id += 1;
        let id = state.next_id * shared.count + shared.index;
        state.calls.insert(id, Outgoing { frames: VecDeque::new(), slots: IdMap::default(), ready: VecDeque::new(), combined: None, pace: None, last_write: None, queued: 0, finish: None, blocked: false, unflushed: false, notify: notify.clone() });
        shared.push_event(&mut state, Event::Call { id, method, request: message, peer });
        id
    };
    let closed = write(id, stream, &notify, &shared).await;
    let mut state = shared.lock();
    if let Some(call) = state.calls.remove(&id) {
        for topic in call.slots.keys() {
            if let Some(ids) = state.topics.get_mut(topic) {
                if let Some(at) = ids.iter().position(|other| *other == id) {
                    ids.swap_remove(at);
                }
                if ids.is_empty() {
                    state.topics.remove(topic);
                }
            }
        }
    }
    if closed {
        shared.push_event(&mut state, Event::Closed { id });
    }
}

/// Writes `value` as a protobuf varint at the start of `out` (10 bytes at most); its length.
fn put_varint(out: &mut [u8], mut value: u64) -> usize {
    let mut n = 0;
    while value >= 0x80 {
        out[n] = (value as u8 & 0x7f) | 0x80;
        value >>= 7;
        n += 1;
    }
    out[n] = value as u8;
    n + 1
}

/// Writes varint field `field` = `value` at the start of `out` (20 bytes at most) unless the field
/// or the value is 0; its length.
fn put_varint_field(out: &mut [u8], field: u32, value: u64) -> usize {
    if field == 0 || value == 0 {
        return 0;
    }
    let n = put_varint(out, u64::from(field) << 3);
    n + put_varint(&mut out[n..], value)
}

/// Appends the next topic message of a call to `out`, framed: the message, its conflation count
/// (when not 0 and a field is set), the call's tail; for a combining call, every slot's pending
/// part in one message (see [`Server::subscribe`]). False when no slot holds one.
fn put_topic_frame(call: &mut Outgoing, config: &Config, out: &mut BytesMut) -> bool {
    if let Some(tail) = call.combined.clone() {
        return put_combined_frame(call, &tail, config, out);
    }
    while let Some(topic) = call.ready.pop_front() {
        let Some(slot) = call.slots.get_mut(&topic) else { continue };
        let Some(pending) = slot.pending.take() else { continue };
        let mut count = [0u8; 20];
        let count_len = put_varint_field(&mut count, config.conflated_field, pending.replaced);
        let length = pending.body.len() + count_len + slot.tail.len();
        out.reserve(5 + length);
        out.put_u8(0);
        out.put_u32(length as u32);
        out.put_slice(&pending.body);
        out.put_slice(&count[..count_len]);
        out.put_slice(&slot.tail);
        return true;
    }
    false
}

/// A combining call's one message from every slot that holds a part: the parts in the order their
/// slots filled, the smallest stamp, the summed conflation count, the tail. False when none does.
fn put_combined_frame(call: &mut Outgoing, tail: &Bytes, config: &Config, out: &mut BytesMut) -> bool {
    let mut parts = Vec::with_capacity(call.ready.len());
    let (mut stamp, mut replaced) = (u64::MAX, 0);
    while let Some(topic) = call.ready.pop_front() {
        let Some(pending) = call.slots.get_mut(&topic).and_then(|slot| slot.pending.take()) else { continue };
        stamp = stamp.min(pending.stamp);
        replaced += pending.replaced;
        parts.push(pending.body);
    }
    if parts.is_empty() {
        return false;
    }
    let mut fields = [0u8; 40];
    let mut fields_len = put_varint_field(&mut fields, config.stamp_field, stamp);
    fields_len += put_varint_field(&mut fields[fields_len..], config.conflated_field, replaced);
    let length = parts.iter().map(Bytes::len).sum::<usize>() + fields_len + tail.len();
    out.reserve(5 + length);
    out.put_u8(0);
    out.put_u32(length as u32);
    for part in &parts {
        out.put_slice(part);
    }
    out.put_slice(&fields[..fields_len]);
    out.put_slice(tail);
    true
}

/// Bytes a call's writer gathers from its queue and slots into one write (it takes at least one
/// message, however large).
const MAX_BATCH: usize = 32 * 1024;

/// What a call's writer takes at once: every message ready (queued by `send` first, then the
/// topics' in the order their slots filled), up to MAX_BATCH, as one buffer, and how many of its
/// bytes were `send`'s (counted in `queued`). Gathered, a refresh's books for a call go out in one
/// DATA frame and one syscall, not one each: the kernel's TCP path is most of the transport's cost
/// (a write per message measured ~10 µs a message, three quarters of it in the kernel).
///
/// A paced call's topic messages are left in their slots until its next write is due (unless the
/// call is finishing: they go before its status), and any write makes the next one due an
/// interval later.
fn gather(call: &mut Outgoing, config: &Config, now: Instant) -> Option<(Bytes, usize)> {
    let topics = call.finish.is_some() || call.pace.is_none_or(|(_, next)| now >= next);
    let mut batch = BytesMut::new();
    let mut counted = 0;
    while batch.len() < MAX_BATCH {
        if let Some(frame) = call.frames.pop_front() {
            counted += frame.len();
            batch.extend_from_slice(&frame);
        } else if !topics || !put_topic_frame(call, config, &mut batch) {
            break;
        }
    }
    if batch.is_empty() {
        return None;
    }
    call.last_write = Some(now);
    if let Some((interval, next)) = &mut call.pace {
        *next = now + *interval;
    }
    Some((batch.freeze(), counted))
}

/// When a paced call whose slots hold messages may write them (None: not paced, or nothing held:
/// `ready` lists the slots that hold one).
fn held_until(call: &Outgoing) -> Option<Instant> {
    let (_, next) = call.pace?;
    (!call.ready.is_empty()).then_some(next)
}

/// Writes call `id`'s messages as flow control allows, then its status. True when the client went
/// away first.
async fn write(id: u64, mut stream: SendStream<Bytes>, notify: &Notify, shared: &Shared) -> bool {
    loop {
        let (batch, finish, held) = {
            let mut state = shared.lock();
            let Some(call) = state.calls.get_mut(&id) else { return true };
            match gather(call, &shared.config, Instant::now()) {
                Some(batch) => (Some(batch), None, None),
                None => (None, call.finish.take(), held_until(call)),
            }
        };
        if let Some((mut frame, counted)) = batch {
            while !frame.is_empty() {
                stream.reserve_capacity(frame.len());
                // Capacity, or the client resetting the stream while we wait for it.
                let granted = std::future::poll_fn(|cx| {
                    if stream.poll_reset(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    stream.poll_capacity(cx).map(|capacity| match capacity {
                        Some(Ok(n)) => Some(n),
                        _ => None,
                    })
                })
                .await;
                let Some(granted) = granted else { return true };
                if granted == 0 {
                    continue;
                }
                let chunk = frame.split_to(granted.min(frame.len()));
                if stream.send_data(chunk, false).is_err() {
                    return true;
                }
            }
            if counted == 0 {
                continue; // topics' messages only: never in `queued`
            }
            let mut state = shared.lock();
            let low_water = shared.config.low_water;
            if let Some(call) = state.calls.get_mut(&id) {
                call.queued -= counted;
                if call.blocked && call.queued <= low_water {
                    call.blocked = false;
                    shared.push_event(&mut state, Event::Writable { id });
                }
            }
            continue;
        }
        if let Some((status, message)) = finish {
            let _ = stream.send_trailers(status_headers(status, &message));
            return false;
        }
        let due = async {
            match held {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notify.notified() => {}
            _ = due => {}
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's config for the tests: a free port, one method, small limits.
    fn config() -> Config {
        Config {
            host: "127.0.0.1".into(),
            port: 0,
            methods: vec!["/a.B/C".into()],
            max_request_bytes: 1024,
            high_water: 10,
            low_water: 5,
            max_concurrent_streams: 10,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            tls: None,
            conflated_field: 4,
            stamp_field: 3,
            threads: 1,
            realtime_priority: 0,
        }
    }

    /// A socket that stops reading and writing (without closing) once `frozen` is set.
    struct Freezable {
        inner: tokio::net::TcpStream,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Freezable {
        fn frozen(&self) -> bool {
            self.frozen.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl tokio::io::AsyncRead for Freezable {
        fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
            if self.frozen() {
                return Poll::Pending;
            }
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Freezable {
        fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            if self.frozen() {
                return Poll::Pending;
            }
            std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
        }
        fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[test]
    fn a_request_is_one_uncompressed_message_within_the_limit() {
        assert_eq!(unframe(&[0, 0, 0, 0, 2, 8, 1], 10), Request::Message(Bytes::from_static(&[8, 1])));
        assert_eq!(unframe(&[0, 0, 0, 0, 0], 10), Request::Message(Bytes::new()));
        assert_eq!(unframe(&[1, 0, 0, 0, 2, 8, 1], 10), Request::Compressed);
        assert_eq!(unframe(&[0, 0, 0, 0, 11], 10), Request::TooLarge);
        assert_eq!(unframe(&[0, 0, 0, 0, 3, 8, 1], 10), Request::Malformed); // short
        assert_eq!(unframe(&[0, 0, 0, 0, 1, 8, 1], 10), Request::Malformed); // two messages' worth
        assert_eq!(unframe(&[0, 0, 0], 10), Request::Malformed);
        assert_eq!(unframe(&[7, 0, 0, 0, 0], 10), Request::Malformed);
    }

    #[test]
    fn a_status_message_is_percent_encoded() {
        assert_eq!(grpc_message("no book 'CLX5' (50%)").to_str().unwrap(), "no book 'CLX5' (50%25)");
        assert_eq!(grpc_message("é\n").to_str().unwrap(), "%C3%A9%0A");
    }

    #[test]
    fn peers_are_named_as_grpc_names_them() {
        assert_eq!(peer_name("127.0.0.1:5000".parse().unwrap()), "ipv4:127.0.0.1:5000");
        assert_eq!(peer_name("[::1]:5000".parse().unwrap()), "ipv6:[::1]:5000");
    }

    #[test]
    fn a_bad_config_is_refused_before_binding() {
        let config = Config {
            methods: vec![],
            ..config()
        };
        assert_eq!(Server::start(config).err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        for threads in [0, MAX_THREADS + 1] {
            let refused = Server::start(Config { threads, ..self::config() }).err().map(|e| e.kind());
            assert_eq!(refused, Some(io::ErrorKind::InvalidInput), "{threads} threads");
        }
        let refused = Server::start(Config { realtime_priority: MAX_REALTIME_PRIORITY + 1, ..self::config() }).err().map(|e| e.kind());
        assert_eq!(refused, Some(io::ErrorKind::InvalidInput));
    }

    /// The policy and priority the kernel reports for the process's threads named `prefix`*.
    fn scheduling(prefix: &str) -> Vec<(i32, i32)> {
        let mut found = vec![];
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.trim_end().starts_with(prefix) {
                let tid: i32 = task.file_name().to_string_lossy().parse().unwrap();
                let mut param = libc::sched_param { sched_priority: -1 };
                // SAFETY: plain system calls about a thread of this process; param outlives them.
                let policy = unsafe {
                    libc::sched_getparam(tid, &mut param);
                    libc::sched_getscheduler(tid)
                };
                found.push((policy, param.sched_priority));
            }
        }
        found
    }

    /// With `realtime_priority`, every transport thread runs under SCHED_FIFO at it, where the
    /// process may (CAP_SYS_NICE or RLIMIT_RTPRIO); where it may not, the start fails with
    /// PermissionDenied and says what it needs. (Another test runs threads of the same names at
    /// the same time, under SCHED_OTHER: these are told apart by their policy.)
    #[test]
    fn realtime_priority_puts_every_thread_under_sched_fifo() {
        let fifo = || scheduling("mbostream-h2-").into_iter().filter(|&s| s == (libc::SCHED_FIFO, 7)).count();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let effective = status.lines().find_map(|line| line.strip_prefix("CapEff:")).map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap()).unwrap();
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: reads this process's limit into `limit`.
        let rtprio = unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut limit) } == 0 && limit.rlim_cur >= 7;
        let permitted = effective & (1 << 23) != 0 || rtprio; // bit 23: CAP_SYS_NICE
        match Server::start(Config { threads: 3, realtime_priority: 7, ..self::config() }) {
            Ok(server) => {
                assert!(permitted, "SCHED_FIFO was granted where it should not be");
                // Threads are named as they start: wait for the three.
                let deadline = Instant::now() + Duration::from_secs(10);
                while fifo() < 3 {
                    assert!(Instant::now() < deadline, "{:?}", scheduling("mbostream-h2-"));
                    std::thread::sleep(Duration::from_millis(5));
                }
                // SAFETY: reads the calling thread's policy: the owner's thread is left as it was.
                assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
                server.stop(Duration::ZERO);
                assert_eq!(fifo(), 0);
            }
            Err(error) => {
                assert!(!permitted, "{error}");
                assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
                assert!(error.to_string().contains("CAP_SYS_NICE"), "{error}");
                assert_eq!(fifo(), 0);
            }
        }
    }

    /// A client that opens a call and then goes silent (never answers a PING) loses its
    /// connection after one keepalive interval and timeout; its call is reported closed.
    #[test]
    fn a_client_that_does_not_answer_pings_is_dropped() {
        let config = Config {
            high_water: 1 << 20,
            low_water: 1 << 19,
            keepalive_interval: Duration::from_millis(200),
            keepalive_timeout: Duration::from_millis(200),
            ..config()
        };
        let server = Server::start(config).unwrap();
        let port = server.port();
        let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let released = release.clone();
        let client = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (mut sender, connection) = h2::client::handshake(Freezable { inner: socket, frozen: frozen.clone() }).await.unwrap();
                let driver = tokio::spawn(connection);
                let request = http::Request::post("http://x/a.B/C").header("content-type", "application/grpc").body(()).unwrap();
                let (response, mut body) = sender.send_request(request, false).unwrap();
                body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
                let _ = response.await;
                // From now on the client reads and writes nothing, its socket still open: the
                // server's PINGs go unanswered.
                frozen.store(true, std::sync::atomic::Ordering::SeqCst);
                let until = Instant::now() + Duration::from_secs(10);
                while !released.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                driver.abort();
            });
        });
        // The client holds its socket open until released: only the keepalive can close it.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = Vec::new();
        while Instant::now() < deadline && !seen.iter().any(|e| matches!(e, Event::Closed { .. })) {
            seen.extend(server.take_events());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(matches!(seen.first(), Some(Event::Call { id: 1, .. })), "{seen:?}");
        assert!(seen.contains(&Event::Closed { id: 1 }), "{seen:?}");
        assert_eq!(server.open_calls(), 0);
        release.store(true, std::sync::atomic::Ordering::SeqCst);
        server.stop(Duration::from_secs(1));
        client.join().unwrap();
    }

    /// What a call's client got: the bytes, the grpc-status and grpc-message of its trailers, and
    /// the size of each DATA frame.
    type Read = (Vec<u8>, Option<String>, Option<String>, Vec<usize>);

    /// A client thread making one call of `/a.B/C` with `body` and reading it to its end.
    fn call_and_read(port: u16, body: &'static [u8]) -> std::thread::JoinHandle<Read> {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let (mut sender, connection) = h2::client::handshake(socket).await.unwrap();
                tokio::spawn(connection);
                let request = http::Request::post("http://x/a.B/C").header("content-type", "application/grpc").body(()).unwrap();
                let (response, mut request_body) = sender.send_request(request, false).unwrap();
                request_body.send_data(Bytes::from_static(body), true).unwrap();
                let mut body = response.await.unwrap().into_body();
                let (mut received, mut frames) = (Vec::new(), Vec::new());
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    received.extend_from_slice(&chunk);
                    frames.push(chunk.len());
                }
                let trailers = body.trailers().await.unwrap().unwrap_or_default();
                let header = |name: &str| trailers.get(name).map(|v| v.to_str().unwrap().to_owned());
                (received, header("grpc-status"), header("grpc-message"), frames)
            })
        })
    }

    /// A call end to end: its request reaches the owner, the messages the owner sends reach the
    /// client (flushed), framed and in order, and the call ends with the owner's status.
    #[test]
    fn a_call_gets_the_messages_its_owner_sends_and_then_its_status() {
        let server = Server::start(config()).unwrap();
        let port = server.port();
        let client = call_and_read(port, &[0, 0, 0, 0, 2, 8, 1]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let call = loop {
            if let Some(Event::Call { id, method, request, peer }) = server.take_events().into_iter().next() {
                assert_eq!((method.as_str(), &request[..]), ("/a.B/C", &[8u8, 1][..]));
                assert!(peer.starts_with("ipv4:127.0.0.1:"), "{peer}");
                break id;
            }
            assert!(Instant::now() < deadline, "no call arrived");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(server.send(call, b"ab"), Some(7));
        assert_eq!(server.send(call, b""), Some(12));
        server.flush();
        assert!(server.finish(call, 5, "gone 100%"));
        let (received, status, message, frames) = client.join().unwrap();
        let (status, message) = (status.unwrap(), message);
        assert_eq!(received, [0, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0]);
        // Both messages, sent before one flush, leave together: one DATA frame, one write.
        assert_eq!(frames, [12]);
        assert_eq!((status.as_str(), message.as_deref()), ("5", Some("gone 100%25")));
        assert_eq!(server.open_calls(), 0);
        assert_eq!(server.send(call, b"late"), None);
        server.stop(Duration::from_secs(1));
    }

    /// Topics: a call subscribed after its owner sent it a message gets that first, then the
    /// newest version published since (older and already-sent versions ignored), with the count
    /// of those it replaced and its own tail; nothing after its end.
    #[test]
    fn a_topic_message_replaces_the_one_not_written_yet_and_says_how_many() {
        let server = Server::start(config()).unwrap();
        let port = server.port();
        let client = call_and_read(port, &[0, 0, 0, 0, 0]);
        let call = calls(&server, 1, Instant::now() + Duration::from_secs(5))[0];
        assert_eq!(server.publish(7, 1, b"unsubscribed", b"", 0), 0);
        assert_eq!(server.send(call, b"v1"), Some(7));
        assert!(server.subscribe(call, 7, 1, b"T", false, Duration::ZERO));
        assert!(server.subscribe(call, 8, 0, b"U", false, Duration::ZERO));
        assert_eq!(server.publish(7, 1, b"sent already", b"", 0), 0);
        assert_eq!(server.publish(8, 5, b"x", b"", 0), 1);
        for (version, message) in [(2, &b"v2"[..]), (3, b"v3"), (4, b"v4")] {
            assert_eq!(server.publish(7, version, message, b"", 0), 1);
        }
        assert_eq!(server.publish(7, 3, b"older", b"", 0), 0);
        assert_eq!(server.conflated(), 2);
        server.flush();
        assert!(server.finish(call, 0, ""));
        assert_eq!(server.publish(7, 9, b"after the end", b"", 0), 0);
        let (received, _, _, frames) = client.join().unwrap();
        assert_eq!(frames, [received.len()], "what one flush queued goes out as one DATA frame");
        // "v1" as sent; topic 8's message (first to get one) with its tail; v4 replacing v2 and v3:
        // field 4 (varint) = 2, then the tail.
        let expected: Vec<u8> = [&[0, 0, 0, 0, 2][..], b"v1", &[0, 0, 0, 0, 2], b"xU", &[0, 0, 0, 0, 5], b"v4", &[0x20, 2], b"T"].concat();
        assert_eq!(received, expected);
        assert!(!server.subscribe(call, 7, 0, b"", false, Duration::ZERO));
        assert_eq!(server.publish(7, 10, b"gone", b"", 0), 0);
        server.stop(Duration::from_secs(1));
        assert!(server.shards[0].lock().topics.is_empty(), "the ended call's subscriptions are dropped");
    }

    /// Combining calls: what a call's slots hold when its writer runs leaves as one message, the
    /// parts in the order the slots filled (a replaced part keeps its slot's place), the smallest
    /// stamp (field 3), the summed conflation count (field 4), the tail once; what is published
    /// after that write is the next message, and a part with nothing replaced has no count.
    #[test]
    fn a_combining_call_gets_its_slots_as_one_message() {
        let server = Server::start(config()).unwrap();
        let client = call_and_read(server.port(), &[0, 0, 0, 0, 0]);
        let call = calls(&server, 1, Instant::now() + Duration::from_secs(5))[0];
        assert_eq!(server.send(call, b"s"), Some(6));
        assert!(server.subscribe(call, 7, 0, b"E", true, Duration::ZERO));
        assert!(server.subscribe(call, 8, 0, b"E", true, Duration::ZERO));
        assert_eq!(server.publish(7, 1, b"m7", b"p7", 300), 1);
        assert_eq!(server.publish(8, 1, b"m8", b"P8", 200), 1);
        assert_eq!(server.publish(7, 2, b"m7b", b"q7", 400), 1);
        server.flush();
        taken_after(&server, call, None);
        assert_eq!(server.publish(8, 2, b"m8b", b"R8", 500), 1);
        server.flush();
        assert!(server.finish(call, 0, ""));
        let (received, status, _, _) = client.join().unwrap();
        let expected: Vec<u8> = [
            &[0, 0, 0, 0, 1][..], b"s",
            &[0, 0, 0, 0, 10], b"q7", b"P8", &[0x18, 0xc8, 0x01], &[0x20, 1], b"E",
            &[0, 0, 0, 0, 6], b"R8", &[0x18, 0xf4, 0x03], b"E",
        ]
        .concat();
        assert_eq!(received, expected);
        assert_eq!(status.as_deref(), Some("0"));
        assert_eq!(server.conflated(), 1);
        server.stop(Duration::from_secs(1));
    }

    /// Paced calls: what the owner sends goes at once; a topic message published right after waits
    /// until an interval has passed since that write, and what is published meanwhile replaces
    /// it (counted); the status is not held back by the pace.
    #[test]
    fn a_paced_call_writes_its_topics_at_most_once_an_interval() {
        const INTERVAL: Duration = Duration::from_secs(1);
        let server = Server::start(config()).unwrap();
        let client = call_and_read(server.port(), &[0, 0, 0, 0, 0]);
        let call = calls(&server, 1, Instant::now() + Duration::from_secs(5))[0];
        assert_eq!(server.send(call, b"s"), Some(6));
        assert!(server.subscribe(call, 7, 0, b"T", false, INTERVAL));
        server.flush();
        let sent = taken_after(&server, call, None);
        assert_eq!(server.publish(7, 1, b"a", b"", 0), 1);
        assert!(to_wake(&server, call), "a message in an empty slot wakes the writer (it is not due yet)");
        server.flush();
        std::thread::sleep(INTERVAL / 3);
        assert_eq!(last_taken(&server, call), Some(sent), "a topic message taken before the interval was up");
        assert_eq!(server.publish(7, 2, b"b", b"", 0), 1);
        assert!(!to_wake(&server, call), "woken again while its writer sleeps until due");
        server.flush();
        let paced = taken_after(&server, call, Some(sent));
        assert!(paced - sent >= INTERVAL, "taken {:?} after the last write", paced - sent);
        assert_eq!(server.publish(7, 3, b"c", b"", 0), 1);
        server.flush();
        assert!(server.finish(call, 0, ""));
        let (received, status, _, _) = client.join().unwrap();
        assert!(Instant::now() - paced < INTERVAL, "the status waited for the pace");
        let expected: Vec<u8> = [&[0, 0, 0, 0, 1][..], b"s", &[0, 0, 0, 0, 4], b"b", &[0x20, 1], b"T", &[0, 0, 0, 0, 2], b"cT"].concat();
        assert_eq!(received, expected);
        assert_eq!(status.as_deref(), Some("0"));
        server.stop(Duration::from_secs(1));
    }

    /// Whether the next [`Server::flush`] wakes call `id`'s writer.
    fn to_wake(server: &Server, id: u64) -> bool {
        server.shard(id).lock().unflushed.contains(&id)
    }

    /// When call `id`'s writer last took messages to write.
    fn last_taken(server: &Server, id: u64) -> Option<Instant> {
        server.shard(id).lock().calls.get(&id).and_then(|call| call.last_write)
    }

    /// Waits (up to 5 s) until call `id`'s writer takes messages again after `after`; when it did.
    fn taken_after(server: &Server, id: u64, after: Option<Instant>) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match last_taken(server, id) {
                Some(at) if Some(at) != after => return at,
                _ => assert!(Instant::now() < deadline, "the call's writer took nothing"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The calls that arrive before `deadline`, at least `n` of them.
    fn calls(server: &Server, n: usize, deadline: Instant) -> Vec<u64> {
        let mut ids = Vec::new();
        while ids.len() < n {
            ids.extend(server.take_events().into_iter().filter_map(|event| match event {
                Event::Call { id, .. } => Some(id),
                _ => None,
            }));
            assert!(Instant::now() < deadline, "{} calls of {n} arrived", ids.len());
            std::thread::sleep(Duration::from_millis(5));
        }
        ids
    }

    #[test]
    fn the_calls_of_one_connection_published_together_leave_in_one_write() {
        const CALLS: usize = 50;
        let server = Server::start(Config { max_concurrent_streams: CALLS as u32, high_water: 1024, ..config() }).unwrap();
        let port = server.port();
        // One client connection, CALLS calls on it; each reads its first two messages.
        let client = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let (sender, connection) = h2::client::handshake(socket).await.unwrap();
                tokio::spawn(connection);
                let mut reads = Vec::new();
                for _ in 0..CALLS {
                    let mut sender = sender.clone().ready().await.unwrap();
                    let request = http::Request::post("http://x/a.B/C").header("content-type", "application/grpc").body(()).unwrap();
                    let (response, mut request_body) = sender.send_request(request, false).unwrap();
                    request_body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
                    reads.push(tokio::spawn(async move {
                        let mut body = response.await.unwrap().into_body();
                        let mut received = Vec::new();
                        while received.len() < 2 * 5 + 2 + 400 + 1 {
                            let chunk = body.data().await.unwrap().unwrap();
                            let _ = body.flow_control().release_capacity(chunk.len());
                            received.extend_from_slice(&chunk);
                        }
                        received
                    }));
                }
                let mut all = Vec::new();
                for read in reads {
                    all.push(read.await.unwrap());
                }
                all
            })
        });
        let ids = calls(&server, CALLS, Instant::now() + Duration::from_secs(5));
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(server.send(*id, b"hi"), Some(7));
            assert!(server.subscribe(*id, 1, 0, &[b'a' + i as u8], false, Duration::ZERO));
        }
        server.flush();
        // Once every call's first message is out, the next publication: 50 frames of 405 bytes,
        // each of which h2 alone would write on its own (a frame of 256 bytes or more is).
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.shards[0].lock().calls.values().any(|call| !call.frames.is_empty()) {
            assert!(Instant::now() < deadline, "the first messages were not taken");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        let before = server.writes();
        assert_eq!(server.publish(1, 1, &[7; 400], b"", 0), CALLS);
        server.flush();
        let received = client.join().unwrap();
        let writes = server.writes() - before;
        assert!(writes <= 3, "{writes} writes for one publication to {CALLS} calls of a connection");
        let mut tails: Vec<u8> = received.iter().map(|bytes| {
            assert_eq!(&bytes[..7], &[0, 0, 0, 0, 2, b'h', b'i']);
            assert_eq!(&bytes[7..12], &[0, 0, 0, 1, 145]);
            assert!(bytes[12..412].iter().all(|b| *b == 7));
            bytes[412]
        }).collect();
        tails.sort_unstable();
        assert_eq!(tails, (0..CALLS as u8).map(|i| b'a' + i).collect::<Vec<_>>());
        server.stop(Duration::from_secs(1));
    }

    /// With three threads, three connections land on one each (the threads are there, by name);
    /// a call's messages and status reach it through its own thread, and a publication reaches
    /// the subscribed calls of every thread, each with its own tail.
    #[test]
    fn connections_are_dealt_out_to_the_threads_and_a_publication_reaches_all() {
        let server = Server::start(Config { threads: 3, high_water: 1 << 20, low_water: 1 << 19, ..config() }).unwrap();
        // A thread names itself once it runs.
        let named = |names: &[String]| (0..3).all(|n| names.contains(&format!("mbostream-h2-{n}")));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let names: Vec<String> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect();
            if named(&names) {
                break;
            }
            assert!(Instant::now() < deadline, "{names:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let port = server.port();
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            // One connection at a time, so that which thread takes each is known.
            clients.push(call_and_read(port, &[0, 0, 0, 0, 0]));
            ids.extend(calls(&server, 1, deadline));
        }
        assert_eq!(ids.iter().map(|id| id % 3).collect::<Vec<_>>(), [0, 1, 2], "{ids:?}");
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(server.send(id, &[b'a' + n as u8]), Some(6));
            assert!(server.subscribe(id, 7, 0, &[b'0' + n as u8], false, Duration::ZERO));
        }
        assert_eq!(server.publish(7, 1, b"b", b"", 0), 3);
        assert_eq!(server.publish(7, 2, b"c", b"", 0), 3);
        assert_eq!(server.conflated(), 3);
        server.flush();
        for (n, &id) in ids.iter().enumerate() {
            assert!(server.finish(id, n as u32, ""));
        }
        for (n, client) in clients.into_iter().enumerate() {
            let (received, status, ..) = client.join().unwrap();
            let expected: Vec<u8> = [&[0, 0, 0, 0, 1, b'a' + n as u8][..], &[0, 0, 0, 0, 4, b'c', 0x20, 1, b'0' + n as u8]].concat();
            assert_eq!((received, status), (expected, Some(n.to_string())));
        }
        assert_eq!(server.open_calls(), 0);
        server.stop(Duration::from_secs(1));
    }

    #[test]
    fn a_tls_config_rustls_cannot_use_is_refused_before_binding() {
        let garbage = Tls { cert_chain_pem: b"not PEM".to_vec(), key_pem: b"nor this".to_vec(), client_ca_pem: None };
        let error = Server::start(Config { tls: Some(garbage), ..config() }).err().expect("refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("TLS certificate chain"), "{error}");
        let debug = format!("{:?}", Tls { cert_chain_pem: vec![], key_pem: b"SECRET".to_vec(), client_ca_pem: None });
        assert!(!debug.contains("SECRET") && !debug.contains("83, 69"), "{debug}"); // never the key
    }

    #[test]
    fn a_server_starts_on_a_free_port_and_stops() {
        let config = config();
        let server = Server::start(config).unwrap();
        assert_ne!(server.port(), 0);
        assert!(server.take_events().is_empty());
        assert_eq!(server.send(1, b"x"), None);
        assert!(!server.finish(1, 0, ""));
        let started = Instant::now();
        server.stop(Duration::from_secs(1));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
