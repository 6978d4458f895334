//! Experiment: a StreamBook server whose whole send path is native (tokio, one thread; h2), fed
//! real captured messages, to measure what a message costs there against grpc.aio's ~58 µs.
//!
//! Every `--interval-ms` it stamps `ts_out` and sends each open StreamBook stream one message per
//! book (the next captured message of that book; the first one a snapshot), like the Python
//! server's refresh without conflation. Any other method answers UNIMPLEMENTED. It is not
//! mbostream's server: no replay, no request handling (every stream gets every book), no
//! conflation, no limits.
//!
//! Usage: native-send-spike MESSAGES_FILE [--interval-ms F] [--phases N] [--port P]
//! Prints `listening 127.0.0.1:P` once it accepts connections.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::SendStream;
use http::Response;
use tokio::net::TcpListener;

const STREAM_BOOK: &str = "/mbostream.v1.MarketDataService/StreamBook";

/// Captured messages of one book: its snapshot and its live messages (ts_out cleared).
struct Book {
    snapshot: Bytes,
    live: Vec<Bytes>,
}

struct Stream {
    send: SendStream<Bytes>,
    sent_snapshot: bool,
}

fn load(path: &str) -> Vec<Book> {
    let data = std::fs::read(path).expect("read the captured messages");
    let mut books: Vec<Book> = Vec::new();
    let mut at = 0;
    while at + 6 <= data.len() {
        let index = data[at] as usize;
        let snapshot = data[at + 1] == 1;
        let len = u32::from_le_bytes(data[at + 2..at + 6].try_into().unwrap()) as usize;
        let body = Bytes::copy_from_slice(&data[at + 6..at + 6 + len]);
        at += 6 + len;
        while books.len() <= index {
            books.push(Book { snapshot: Bytes::new(), live: Vec::new() });
        }
        if snapshot {
            books[index].snapshot = body;
        } else {
            books[index].live.push(body);
        }
    }
    assert!(!books.is_empty() && books.iter().all(|b| !b.snapshot.is_empty() && !b.live.is_empty()), "every book needs a snapshot and live messages");
    books
}

/// One gRPC length-prefixed message: field 3 (ts_out, a 9-byte varint) then the captured body.
fn frame(ts_out: u64, body: &[u8]) -> Bytes {
    let mut ts = [0u8; 10];
    ts[0] = 0x18; // field 3, varint
    let mut v = ts_out;
    for i in 1..10 {
        let last = i == 9;
        ts[i] = (v & 0x7f) as u8 | if last { 0 } else { 0x80 };
        v >>= 7;
    }
    let len = ts.len() + body.len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    out.put_slice(&ts);
    out.put_slice(body);
    out.freeze()
}

fn unimplemented(mut respond: SendResponse<Bytes>) {
    let response = Response::builder().status(200).header("content-type", "application/grpc").header("grpc-status", "12").body(()).unwrap();
    let _ = respond.send_response(response, true);
}

async fn serve_connection(socket: tokio::net::TcpStream, streams: Rc<RefCell<Vec<Stream>>>) {
    let _ = socket.set_nodelay(true);
    let Ok(mut conn) = h2::server::handshake(socket).await else { return };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        if request.uri().path() != STREAM_BOOK {
            unimplemented(respond);
            continue;
        }
        let mut body = request.into_body();
        tokio::task::spawn_local(async move { while body.data().await.is_some() {} });
        let response = Response::builder().status(200).header("content-type", "application/grpc").body(()).unwrap();
        if let Ok(send) = respond.send_response(response, false) {
            streams.borrow_mut().push(Stream { send, sent_snapshot: false });
        }
    }
}

async fn tick(streams: Rc<RefCell<Vec<Stream>>>, books: Rc<Vec<Book>>, interval: Duration, phases: usize) {
    // Like the Python server's refresh phases: stream i is served at phase i % phases of the
    // interval, so a refresh leaves as `phases` smaller bursts.
    let mut timer = tokio::time::interval(interval / phases as u32);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut step = 0usize;
    loop {
        timer.tick().await;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let phase = step % phases;
        let round = step / phases;
        let mut streams = streams.borrow_mut();
        let mut index = 0usize;
        streams.retain_mut(|stream| {
            index += 1;
            if (index - 1) % phases != phase {
                return true;
            }
            for book in books.iter() {
                let body = if stream.sent_snapshot { &book.live[round % book.live.len()] } else { &book.snapshot };
                if stream.send.send_data(frame(now, body), false).is_err() {
                    return false; // the client went away
                }
            }
            stream.sent_snapshot = true;
            true
        });
        step += 1;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: native-send-spike MESSAGES_FILE [--interval-ms F] [--phases N] [--port P]");
    let mut interval_ms = 5.0f64;
    let mut port = 0u16;
    let mut phases = 1usize;
    let mut i = 2;
    while i + 1 < args.len() {
        match args[i].as_str() {
            "--interval-ms" => interval_ms = args[i + 1].parse().expect("--interval-ms"),
            "--port" => port = args[i + 1].parse().expect("--port"),
            "--phases" => phases = args[i + 1].parse::<usize>().expect("--phases").max(1),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    let books = Rc::new(load(path));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        let streams: Rc<RefCell<Vec<Stream>>> = Rc::default();
        tokio::task::spawn_local(tick(streams.clone(), books.clone(), Duration::from_secs_f64(interval_ms / 1000.0), phases));
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::task::spawn_local(serve_connection(socket, streams.clone()));
        }
    });
}
