//! One write a turn of the connection: what h2 writes while it serves a connection once (every
//! call's frames that were ready) is gathered here and handed to the socket in one syscall when the
//! turn ends ([`Flusher::poll_write_out`]), not one syscall a frame.
//!
//! h2 writes a DATA frame of 256 bytes or more as its own (vectored) write: a connection that
//! carries many calls (one client process's streams, or every client behind an edge such as Envoy)
//! cost a `writev` per call per refresh, and the kernel's TCP path is most of what a message costs
//! the transport. Here h2's writes and its flushes inside a turn only copy; the turn's end writes.
//!
//! Bounded: past [`HIGH_WATER`] bytes a flush writes at once, and past [`MAX_BUFFERED`] a write
//! waits for the socket (backpressure to h2, as the socket itself would give).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered past which h2's own flush writes them at once (a turn with this much to send
/// gains nothing more by waiting for its end).
pub const HIGH_WATER: usize = 64 * 1024;
/// Bytes buffered past which a write waits for the socket.
pub const MAX_BUFFERED: usize = 256 * 1024;

struct Shared<S> {
    io: S,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written.
    written: usize,
    /// A write to the socket failed: every later write says so (h2 then closes the connection).
    failed: Option<io::ErrorKind>,
    /// Writes to the socket, for the transport's count (shared by every connection of a server).
    writes: Arc<AtomicU64>,
}

impl<S: AsyncWrite + Unpin> Shared<S> {
    fn pending(&self) -> usize {
        self.buffer.len() - self.written
    }

    /// Writes what is buffered until it is all out (Ready) or the socket is full (Pending: the
    /// task is woken when it can take more).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        while self.written < self.buffer.len() {
            let result = Pin::new(&mut self.io).poll_write(cx, &self.buffer[self.written..]);
            match result {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.failed = Some(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.writes.fetch_add(1, Ordering::Relaxed);
                    self.written += n;
                }
                Poll::Ready(Err(error)) => {
                    self.failed = Some(error.kind());
                    return Poll::Ready(Err(error));
                }
            }
        }
        // What the socket took may still sit in a layer of its own (TLS records the socket could
        // not take yet): pushed on now, as h2's own flush did, or it would wait for the next write.
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(error)) => {
                self.failed = Some(error.kind());
                return Poll::Ready(Err(error));
            }
            Poll::Ready(Ok(())) => {}
        }
        self.buffer.clear();
        if self.buffer.capacity() > HIGH_WATER {
            // A burst's buffer is not kept for the life of the connection.
            self.buffer.shrink_to(HIGH_WATER);
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// The socket as h2 sees it: reads go straight through; writes are gathered.
pub struct Coalescing<S> {
    shared: Rc<RefCell<Shared<S>>>,
}

/// Writes what a turn gathered, once the turn is over.
pub struct Flusher<S> {
    shared: Rc<RefCell<Shared<S>>>,
}

/// Wraps `io`: h2 gets the first half, the connection's task the second.
pub fn coalescing<S>(io: S, writes: Arc<AtomicU64>) -> (Coalescing<S>, Flusher<S>) {
    let shared = Rc::new(RefCell::new(Shared { io, buffer: Vec::new(), written: 0, failed: None, writes }));
    (Coalescing { shared: shared.clone() }, Flusher { shared })
}

impl<S: AsyncWrite + Unpin> Flusher<S> {
    /// Writes what was gathered (call it after each turn of the connection). Pending when the
    /// socket cannot take it all now: the task is woken when it can, and the rest waits here.
    pub fn poll_write_out(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.borrow_mut().poll_drain(cx)
    }

    /// Bytes gathered and not written yet.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.shared.borrow().pending()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared.borrow_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut shared = self.shared.borrow_mut();
        if let Some(kind) = shared.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if shared.pending() >= MAX_BUFFERED {
            // Full: write some out first; a socket that cannot take it is h2's backpressure.
            match shared.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending if shared.pending() >= MAX_BUFFERED => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        if shared.written >= HIGH_WATER {
            // A socket that keeps taking only part: what it took is dropped from the front, or the
            // buffer would grow by all that ever passed through it.
            let written = shared.written;
            shared.buffer.drain(..written);
            shared.written = 0;
        }
        let room = MAX_BUFFERED - shared.pending();
        let n = data.len().min(room);
        shared.buffer.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        // Copies every slice h2 chained (a frame's head and its payload) in one call.
        let mut total = 0;
        let this = self.get_mut();
        for buf in bufs.iter().filter(|buf| !buf.is_empty()) {
            match Pin::new(&mut *this).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) => {
                    total += n;
                    if n < buf.len() {
                        break;
                    }
                }
                Poll::Ready(Err(error)) if total == 0 => return Poll::Ready(Err(error)),
                Poll::Pending if total == 0 => return Poll::Pending,
                _ => break,
            }
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Inside a turn h2 flushes after each large frame; only past HIGH_WATER does that write now.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared.borrow_mut();
        if let Some(kind) = shared.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if shared.pending() >= HIGH_WATER {
            // Pending or not, what is left is written at the turn's end or when the socket wakes us.
            if let Poll::Ready(Err(error)) = shared.poll_drain(cx) {
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Closing: what is buffered is written first (a GOAWAY, the last trailers).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared.borrow_mut();
        std::task::ready!(shared.poll_drain(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    /// A socket that counts its writes and can refuse them (full) until told otherwise.
    #[derive(Default)]
    struct Socket {
        written: Vec<u8>,
        writes: usize,
        full: bool,
        broken: bool,
        shut: bool,
        /// Bytes it takes before it is full (None: all it is given).
        budget: Option<usize>,
        flushes: usize,
    }

    impl AsyncRead for Socket {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            if self.full {
                return Poll::Pending;
            }
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let n = match self.budget {
                Some(0) => return Poll::Pending,
                Some(budget) => budget.min(data.len()),
                None => data.len(),
            };
            if let Some(budget) = &mut self.budget {
                *budget -= n;
            }
            self.writes += 1;
            self.written.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn poll<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        let waker = Arc::new(Noop).into();
        f(&mut Context::from_waker(&waker))
    }

    fn write(io: &mut Coalescing<Socket>, data: &[u8]) -> Poll<io::Result<usize>> {
        poll(|cx| Pin::new(&mut *io).poll_write(cx, data))
    }

    fn socket(io: &Coalescing<Socket>) -> std::cell::RefMut<'_, Socket> {
        std::cell::RefMut::map(io.shared.borrow_mut(), |shared| &mut shared.io)
    }

    #[test]
    fn a_turns_writes_and_flushes_reach_the_socket_as_one_write_at_its_end() {
        let counted = Arc::new(AtomicU64::new(0));
        let (mut io, flusher) = coalescing(Socket::default(), counted.clone());
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let frame = vec![i; 300];
            expected.extend_from_slice(&frame);
            assert!(matches!(write(&mut io, &frame), Poll::Ready(Ok(300))));
            assert!(matches!(poll(|cx| Pin::new(&mut io).poll_flush(cx)), Poll::Ready(Ok(()))));
        }
        let slices = [io::IoSlice::new(b"head"), io::IoSlice::new(b""), io::IoSlice::new(b"payload")];
        assert!(matches!(poll(|cx| Pin::new(&mut io).poll_write_vectored(cx, &slices)), Poll::Ready(Ok(11))));
        expected.extend_from_slice(b"headpayload");
        assert_eq!(socket(&io).writes, 0, "nothing reaches the socket inside the turn");
        assert!(matches!(poll(|cx| flusher.poll_write_out(cx)), Poll::Ready(Ok(()))));
        assert_eq!(socket(&io).writes, 1);
        assert_eq!(socket(&io).flushes, 1, "a layer of the socket's own (TLS) is flushed after the write");
        assert_eq!(counted.load(Ordering::Relaxed), 1);
        assert_eq!(socket(&io).written, expected);
        assert!(matches!(poll(|cx| flusher.poll_write_out(cx)), Poll::Ready(Ok(()))));
        assert_eq!(socket(&io).writes, 1, "an empty turn writes nothing");
    }

    #[test]
    fn a_flush_past_high_water_writes_at_once_and_a_full_buffer_waits_for_the_socket() {
        let (mut io, flusher) = coalescing(Socket::default(), Arc::default());
        assert!(matches!(write(&mut io, &vec![1; HIGH_WATER]), Poll::Ready(Ok(_))));
        assert!(matches!(poll(|cx| Pin::new(&mut io).poll_flush(cx)), Poll::Ready(Ok(()))));
        assert_eq!(socket(&io).writes, 1);
        assert_eq!(flusher.pending(), 0);

        socket(&io).full = true;
        assert!(matches!(write(&mut io, &vec![2; MAX_BUFFERED + 10]), Poll::Ready(Ok(n)) if n == MAX_BUFFERED));
        assert!(write(&mut io, &[3]).is_pending(), "a full buffer over a full socket is backpressure");
        assert!(poll(|cx| flusher.poll_write_out(cx)).is_pending());
        assert_eq!(flusher.pending(), MAX_BUFFERED);
        socket(&io).full = false;
        assert!(matches!(write(&mut io, &[3]), Poll::Ready(Ok(1))));
        assert_eq!(flusher.pending(), 1, "the full buffer went out before the byte was taken");
    }

    #[test]
    fn shutting_down_writes_what_is_buffered_first() {
        let (mut io, flusher) = coalescing(Socket::default(), Arc::default());
        assert!(matches!(write(&mut io, b"goaway"), Poll::Ready(Ok(6))));
        assert!(matches!(poll(|cx| Pin::new(&mut io).poll_shutdown(cx)), Poll::Ready(Ok(()))));
        assert_eq!(socket(&io).written, b"goaway");
        assert!(socket(&io).shut);
        assert_eq!(flusher.pending(), 0);
    }

    #[test]
    fn a_socket_slower_than_h2_gets_every_byte_in_order_from_a_bounded_buffer() {
        let (mut io, flusher) = coalescing(Socket::default(), Arc::default());
        let (mut expected, mut held_back) = (Vec::new(), 0);
        for i in 0..3000u32 {
            // h2 writes 700 bytes a turn; the socket takes 500 a turn.
            let frame: Vec<u8> = (0..700u32).map(|j| (i * 7 + j) as u8).collect();
            match write(&mut io, &frame) {
                Poll::Ready(Ok(n)) => {
                    expected.extend_from_slice(&frame[..n]);
                    held_back += usize::from(n < frame.len());
                }
                Poll::Pending => held_back += 1,
                Poll::Ready(Err(error)) => panic!("{error}"),
            }
            socket(&io).budget = Some(500);
            assert!(poll(|cx| flusher.poll_write_out(cx)).is_pending());
            let held = io.shared.borrow().buffer.len();
            assert!(held <= MAX_BUFFERED + HIGH_WATER, "the buffer holds {held} bytes after turn {i}");
        }
        assert!(held_back > 0, "the buffer's limit never held h2 back (a write taking less, or none)");
        socket(&io).budget = None;
        assert!(matches!(poll(|cx| flusher.poll_write_out(cx)), Poll::Ready(Ok(()))));
        assert_eq!(socket(&io).written, expected);
    }

    #[test]
    fn a_failed_write_fails_every_later_one() {
        let (mut io, flusher) = coalescing(Socket::default(), Arc::default());
        assert!(matches!(write(&mut io, b"frame"), Poll::Ready(Ok(5))));
        socket(&io).broken = true;
        assert!(matches!(poll(|cx| flusher.poll_write_out(cx)), Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe));
        socket(&io).broken = false;
        assert!(matches!(write(&mut io, b"more"), Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe));
        assert!(matches!(poll(|cx| Pin::new(&mut io).poll_flush(cx)), Poll::Ready(Err(_))));
        assert!(matches!(poll(|cx| flusher.poll_write_out(cx)), Poll::Ready(Err(_))));
        assert_eq!(socket(&io).writes, 0);
    }
}
