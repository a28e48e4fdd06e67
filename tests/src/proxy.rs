//! A TCP proxy that tests can cut and restore, to simulate an outage of the service behind it (the RabbitMQ broker).
//!
//! [`TcpProxy::start`] listens on `127.0.0.1:0` and forwards every accepted connection to the
//! upstream address. [`TcpProxy::cut`] shuts down every forwarded connection at once (both the
//! client and the upstream side see end-of-stream) and makes the proxy close new connections as
//! soon as it accepts them, while keeping its port; [`TcpProxy::restore`] forwards again.
//! [`TcpProxy::stall`] keeps every connection open but forwards nothing more, in either direction:
//! a peer that hangs (a node that takes messages and answers none).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A TCP proxy on `127.0.0.1` in front of one upstream address.
///
/// Dropping it closes the listener and every forwarded connection.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// State shared by the [`TcpProxy`] handle and its tasks.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The number of live forwarded connections, for waiting on it.
    live: watch::Sender<usize>,
    accepted: AtomicU32,
    /// True while the proxy forwards nothing (see [`TcpProxy::stall`]).
    stalled: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    cut: bool,
    next_id: u64,
    /// Handles (duplicated sockets) on the client and upstream sides of each live connection.
    connections: HashMap<u64, [std::net::TcpStream; 2]>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_cut(&self) -> bool {
        self.state().cut
    }

    /// Shuts down every live connection now and forgets it; the caller holds the lock.
    fn shut_down_all(&self, state: &mut State) {
        for (_, sockets) in state.connections.drain() {
            for socket in sockets {
                // Fails only if the socket is already disconnected, which is the goal anyway.
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        self.live.send_replace(0);
    }
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards each accepted connection to `upstream`; panics if it cannot bind.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("TCP proxy: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("TCP proxy: no local address: {e}"));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            live: watch::Sender::new(0),
            accepted: AtomicU32::new(0),
            stalled: watch::Sender::new(false),
        });
        let accept_task = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        TcpProxy {
            addr,
            upstream,
            shared,
            accept_task,
        }
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Shuts down every live forwarded connection now, and from now on closes new connections as soon as they are accepted.
    ///
    /// Both sides of a live connection see end-of-stream (a later write may get a reset). The
    /// listener stays bound, so the port is kept for [`TcpProxy::restore`].
    pub fn cut(&self) {
        let mut state = self.shared.state();
        state.cut = true;
        self.shared.shut_down_all(&mut state);
    }

    /// Keeps every connection open, and accepts new ones, but forwards no byte more in either
    /// direction until [`TcpProxy::unstall`]: what reaches the proxy waits in its sockets.
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Forwards again after [`TcpProxy::stall`], what waited first.
    pub fn unstall(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// Forwards new connections again after [`TcpProxy::cut`].
    pub fn restore(&self) {
        self.shared.state().cut = false;
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.is_cut()
    }

    /// The number of forwarded connections that are open now (0 right after [`TcpProxy::cut`]).
    pub fn live_connections(&self) -> usize {
        *self.shared.live.borrow()
    }

    /// The number of connections accepted so far, including those closed at once while cut.
    pub fn accepted_connections(&self) -> u32 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` forwarded connections are open (e.g. a client reconnected after [`TcpProxy::restore`]); panics after `within`.
    pub async fn wait_for_live_connections(&self, n: usize, within: Duration) {
        let mut rx = self.shared.live.subscribe();
        let waited = tokio::time::timeout(within, async {
            rx.wait_for(|live| *live >= n).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("TCP proxy: state closed while waiting for {n} live connections"),
            Err(_) => panic!(
                "TCP proxy: expected at least {n} live connection(s) to {} within {within:?}, but {} \
                 are live ({} accepted in all, cut: {})",
                self.upstream,
                self.live_connections(),
                self.accepted_connections(),
                self.is_cut()
            ),
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Close live connections now; aborting the accept loop closes the listener and, through
        // its JoinSet, aborts every connection task.
        let mut state = self.shared.state();
        state.cut = true;
        self.shared.shut_down_all(&mut state);
        drop(state);
        self.accept_task.abort();
    }
}

/// Accepts connections until aborted: closes them at once while cut, forwards them otherwise.
async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    if shared.is_cut() {
                        drop(client);
                    } else {
                        connections.spawn(forward(client, upstream, Arc::clone(&shared)));
                    }
                }
                // Typically too many open files: back off a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection until either side closes it or the proxy is cut.
async fn forward(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    // If the upstream is unreachable, dropping the client closes it.
    let Ok(upstream) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let Ok((mut client, client_handle)) = with_handle(client) else {
        return;
    };
    let Ok((mut upstream, upstream_handle)) = with_handle(upstream) else {
        return;
    };
    let Some(_registration) = Registration::new(&shared, [client_handle, upstream_handle]) else {
        // Cut while connecting upstream.
        return;
    };
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    tokio::join!(
        pipe(client_read, upstream_write, shared.stalled.subscribe()),
        pipe(upstream_read, client_write, shared.stalled.subscribe()),
    );
}

/// Copies `from` to `to` until `from` ends (then shuts `to` down), pausing while stalled.
async fn pipe(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut stalled: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if !until(&mut stalled, false).await {
            return;
        }
        tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            },
            // Reading is cancel-safe: nothing is lost by starting over once unstalled.
            _ = until(&mut stalled, true) => {}
        }
    }
}

/// Waits until the proxy's stall is `value`; false if the proxy is gone.
async fn until(stalled: &mut watch::Receiver<bool>, value: bool) -> bool {
    stalled.wait_for(|stalled| *stalled == value).await.is_ok()
}

/// Splits off a duplicate handle on the socket, so `cut` can shut it down from outside the task.
fn with_handle(stream: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let stream = stream.into_std()?;
    let handle = stream.try_clone()?;
    Ok((TcpStream::from_std(stream)?, handle))
}

/// A live connection in [`State::connections`], removed again when dropped.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> Registration<'a> {
    /// Registers the sockets, unless the proxy is cut (then they are dropped, closing them).
    fn new(shared: &'a Shared, sockets: [std::net::TcpStream; 2]) -> Option<Self> {
        let mut state = shared.state();
        if state.cut {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.connections.insert(id, sockets);
        shared.live.send_replace(state.connections.len());
        Some(Self { shared, id })
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        // Absent if `cut` already shut it down; dropping the handles closes them otherwise.
        if state.connections.remove(&self.id).is_some() {
            self.shared.live.send_replace(state.connections.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WITHIN: Duration = Duration::from_secs(10);

    /// An upstream that echoes every byte back, on its own task until the test ends.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("bind echo server: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("echo server address: {e}"));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Writes `payload` and expects it echoed back.
    async fn assert_echoes(stream: &mut TcpStream, payload: &[u8]) {
        let written = stream.write_all(payload).await;
        assert!(written.is_ok(), "write through the proxy: {written:?}");
        let mut buf = vec![0; payload.len()];
        let read = tokio::time::timeout(WITHIN, stream.read_exact(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "read the echo through the proxy: {read:?}"
        );
        assert_eq!(buf, payload);
    }

    /// Expects the connection to be closed (EOF or reset), possibly after `write`.
    async fn assert_closed(stream: &mut TcpStream) {
        // A write may or may not fail depending on timing; the read must end the stream.
        let _ = stream.write_all(b"anyone there?").await;
        let mut buf = [0; 64];
        match tokio::time::timeout(WITHIN, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => panic!("expected a closed connection, read {:?}", &buf[..n]),
            Err(_) => panic!("expected a closed connection, it stayed open for {WITHIN:?}"),
        }
    }

    #[tokio::test]
    async fn forwards_both_ways() {
        let upstream = echo_server().await;
        let proxy = TcpProxy::start(upstream).await;
        assert_eq!(proxy.upstream(), upstream);
        assert_eq!(proxy.addr().port(), proxy.port());
        assert_eq!(proxy.live_connections(), 0);

        let mut a = connect(proxy.addr()).await;
        let mut b = connect(proxy.addr()).await;
        assert_echoes(&mut a, b"hello").await;
        assert_echoes(&mut b, &[7; 100_000]).await;
        assert_eq!(proxy.live_connections(), 2);
        assert_eq!(proxy.accepted_connections(), 2);

        // A client closing its side ends the forwarded connection.
        let _ = a.shutdown().await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WITHIN, a.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        let mut rx = proxy.shared.live.subscribe();
        let waited = tokio::time::timeout(WITHIN, rx.wait_for(|live| *live == 1)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "live connections stayed at {}",
            proxy.live_connections()
        );
        assert_echoes(&mut b, b"still here").await;
    }

    #[tokio::test]
    async fn cut_closes_live_and_new_connections_and_restore_forwards_again() {
        let upstream = echo_server().await;
        let proxy = TcpProxy::start(upstream).await;
        let port = proxy.port();
        let mut live = connect(proxy.addr()).await;
        assert_echoes(&mut live, b"before").await;
        proxy.wait_for_live_connections(1, WITHIN).await;

        proxy.cut();
        assert!(proxy.is_cut());
        assert_eq!(proxy.live_connections(), 0);
        assert_closed(&mut live).await;

        // The port is kept: connecting works, but the connection is closed at once.
        let mut refused = connect(proxy.addr()).await;
        assert_closed(&mut refused).await;
        assert_eq!(proxy.port(), port);
        assert_eq!(proxy.live_connections(), 0);
        assert_eq!(proxy.accepted_connections(), 2);

        proxy.restore();
        assert!(!proxy.is_cut());
        let mut again = connect(proxy.addr()).await;
        assert_echoes(&mut again, b"after").await;
        proxy.wait_for_live_connections(1, WITHIN).await;
        assert_eq!(proxy.live_connections(), 1);

        // Cutting twice is fine.
        proxy.cut();
        proxy.cut();
        assert_closed(&mut again).await;
    }

    #[tokio::test]
    async fn unreachable_upstream_closes_the_client() {
        // Bind then drop to get a port that (most likely) nobody listens on.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let dead = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("address: {e}"));
        drop(listener);
        let proxy = TcpProxy::start(dead).await;
        let mut client = connect(proxy.addr()).await;
        assert_closed(&mut client).await;
        assert_eq!(proxy.live_connections(), 0);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_everything() {
        let upstream = echo_server().await;
        let proxy = TcpProxy::start(upstream).await;
        let addr = proxy.addr();
        let mut live = connect(addr).await;
        assert_echoes(&mut live, b"x").await;
        drop(proxy);
        assert_closed(&mut live).await;
    }

    #[tokio::test]
    #[should_panic(expected = "expected at least 1 live connection(s)")]
    async fn wait_for_live_connections_panics_on_timeout() {
        let upstream = echo_server().await;
        let proxy = TcpProxy::start(upstream).await;
        proxy
            .wait_for_live_connections(1, Duration::from_millis(20))
            .await;
    }
}
