//! One accept loop, [`serve`], for every listener of the agent (the external TCP one, over TLS or
//! not, the local TCP one and the local Unix socket), with the same protections everywhere
//! (docs/agent.md, "Failure behaviour"):
//!
//! - Accept errors that pass (out of file descriptors, a connection aborted before it was
//!   accepted, ...) are waited out with a short backoff. Any other accept error ends the loop and
//!   is returned: the agent then exits non-zero, so systemd restarts it.
//! - At most `max_connections` open connections per listener. One more is closed right after
//!   `accept`, before any TLS handshake and without a byte written: the cheapest answer, the same
//!   on every listener, and one that cannot block on a client that does not read. (A 503 would
//!   need a TLS handshake first on the external listener, the very work a flood asks for.)
//! - The TLS handshake, the request head, and a connection on which nothing moves each have a
//!   timeout.

use anyhow::{Context, Result};
use openssl::ssl::SslAcceptor;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::audit::Throttle;
use crate::config::Config;

/// Per-connection and per-client limits, the same for every listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Evidence requests per client on each listener.
    pub evidence_rate: ClientRate,
}

impl From<&Config> for Limits {
    fn from(config: &Config) -> Self {
        Self {
            max_connections: config.max_connections,
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            evidence_rate: ClientRate {
                per_sec: config.client_evidence_per_sec,
                burst: config.client_evidence_burst,
            },
        }
    }
}

/// Who sent a request, added to every request's extensions: `ip:port`, or `unix` for the local
/// socket.
#[derive(Debug, Clone)]
pub struct Peer(pub String);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Peer {
    /// Whom a rate limit counts this peer as: its IP address (an IPv6 one by its /64, the block
    /// one host usually gets), or the local socket as a whole.
    fn client(&self) -> Client {
        let Ok(address) = self.0.parse::<std::net::SocketAddr>() else {
            return Client::Local;
        };
        match address.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::Ip(IpAddr::V4(v4)),
                None => Client::Ip(IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())),
            },
            v4 => Client::Ip(v4),
        }
    }
}

/// A client as [`ClientLimiter`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    Ip(IpAddr),
    /// The local Unix socket (no address).
    Local,
    /// Every new client while [`MAX_TRACKED_CLIENTS`] recent ones are tracked: they share one
    /// bucket, so a flood from many addresses cannot grow the table.
    Overflow,
}

/// A token bucket per client: `burst` requests at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRate {
    pub per_sec: u32,
    pub burst: u32,
}

/// Clients with a partly used bucket remembered at once (a full bucket is forgotten when room is
/// needed: it is no different from a new one).
const MAX_TRACKED_CLIENTS: usize = 16_384;

/// Evidence requests each client may make on one listener. Every evidence request costs a TPM
/// quote (and a TEE report) from the one queue all clients share; this keeps one client from
/// taking all of it, well above what a verifier needs (one request per verification).
#[derive(Debug)]
pub struct ClientLimiter {
    rate: ClientRate,
    buckets: std::sync::Mutex<HashMap<Client, Bucket>>,
    refusals: Throttle,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, rate: ClientRate, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(rate.per_sec);
        (self.tokens + gained).min(f64::from(rate.burst))
    }
}

impl ClientLimiter {
    pub fn new(rate: ClientRate) -> Self {
        Self {
            rate,
            buckets: std::sync::Mutex::default(),
            refusals: Throttle::new(1, Duration::from_secs(10)),
        }
    }

    /// Takes one request from `peer`'s bucket; `Err(time until one is back)` when it is empty.
    pub fn check(&self, peer: &Peer) -> Result<(), Duration> {
        let checked = self.check_at(peer.client(), Instant::now());
        if let Err(retry) = checked {
            if let Some(suppressed) = self.refusals.allow() {
                tracing::warn!(%peer, ?retry, suppressed, "a client is over its evidence rate: 429");
            }
        }
        checked
    }

    fn check_at(&self, mut client: Client, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, f64::from(self.rate.burst));
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(&client) && buckets.len() >= MAX_TRACKED_CLIENTS {
            buckets.retain(|_, bucket| bucket.refilled(rate, now) < burst);
            if buckets.len() >= MAX_TRACKED_CLIENTS {
                client = Client::Overflow;
            }
        }
        let fresh = Bucket {
            tokens: burst,
            at: now,
        };
        let bucket = buckets.entry(client).or_insert(fresh);
        *bucket = Bucket {
            tokens: bucket.refilled(rate, now),
            at: now,
        };
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - bucket.tokens;
        Err(Duration::from_secs_f64(missing / f64::from(rate.per_sec)))
    }
}

/// A listening socket.
pub trait Accept: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Peer)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, Peer)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        // Without it, Nagle's algorithm holds back the last TLS record until the peer's delayed
        // ACK (~40 ms per request, measured).
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer(peer.to_string())))
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<(Self::Stream, Peer)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((stream, Peer("unix".into())))
    }
}

/// Serves `app` on `listener` in a task. When the accept loop ends (a fatal accept error, or a
/// panic), the reason goes to `stopped`, which `Agent::wait` returns.
pub fn spawn<L: Accept>(
    name: &'static str,
    listener: L,
    tls: Option<Arc<SslAcceptor>>,
    app: axum::Router,
    limits: Limits,
    stopped: mpsc::UnboundedSender<anyhow::Error>,
) -> JoinHandle<()> {
    use futures_util::FutureExt;
    tokio::spawn(async move {
        let served = std::panic::AssertUnwindSafe(serve(name, listener, tls, app, limits))
            .catch_unwind()
            .await;
        let error = served.unwrap_or_else(|_| anyhow::anyhow!("the accept loop panicked"));
        let error = error.context(format!("{name} listener stopped"));
        tracing::error!("{error:#}");
        let _ = stopped.send(error);
    })
}

/// Accepts connections on `listener` and serves `app` on each, over TLS when `tls` is given,
/// until an accept error that does not pass, which is returned.
pub async fn serve<L: Accept>(
    name: &'static str,
    listener: L,
    tls: Option<Arc<SslAcceptor>>,
    app: axum::Router,
    limits: Limits,
) -> anyhow::Error {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Handlers that queue TPM work take it from their request's extensions.
    let limiter = Arc::new(ClientLimiter::new(limits.evidence_rate));
    let app = app.layer(axum::Extension(limiter));
    let accept_errors = Throttle::new(1, Duration::from_secs(10));
    let over_cap = Throttle::new(1, Duration::from_secs(10));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(error) if is_transient(&error) => {
                if let Some(suppressed) = accept_errors.allow() {
                    tracing::error!(listener = name, suppressed, "accepting: {error}: retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
            Err(error) => return anyhow::Error::new(error).context("accepting"),
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if let Some(suppressed) = over_cap.allow() {
                tracing::warn!(
                    listener = name,
                    %peer,
                    max_connections = limits.max_connections,
                    suppressed,
                    "connection cap reached: closing new connections at once"
                );
            }
            continue;
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = connection(stream, peer.clone(), tls.as_deref(), app, limits).await
            {
                tracing::debug!(listener = name, %peer, "connection: {error:#}");
            }
        });
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Accept errors that pass: resources that running connections give back (descriptors, memory,
/// buffers), and errors of a single pending connection (accept(2): Linux passes pending network
/// errors on the new socket to `accept`). Anything else (EBADF, EINVAL, ENOTSOCK, ...) means the
/// listening socket itself is unusable.
pub fn is_transient(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted
            | ConnectionReset
            | ConnectionRefused
            | Interrupted
            | WouldBlock
            | TimedOut
    ) {
        return true;
    }
    matches!(
        error.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENONET
                | libc::ENOPROTOOPT
                | libc::EOPNOTSUPP
        )
    )
}

/// One connection: the TLS handshake (bounded), then HTTP/1.1 with the header-read and idle
/// timeouts.
async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: Peer,
    tls: Option<&SslAcceptor>,
    app: axum::Router,
    limits: Limits,
) -> Result<()> {
    let activity = Arc::new(Activity::new());
    let stream = Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    match tls {
        None => serve_http(stream, peer, app, limits, activity).await,
        Some(acceptor) => {
            let stream = tokio::time::timeout(
                limits.handshake_timeout,
                crate::tls::handshake(acceptor, stream),
            )
            .await
            .map_err(|_| anyhow::anyhow!("TLS handshake timed out"))??;
            serve_http(stream, peer, app, limits, activity).await
        }
    }
}

async fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: Peer,
    app: axum::Router,
    limits: Limits,
    activity: Arc<Activity>,
) -> Result<()> {
    let app = hyper_util::service::TowerToHyperService::new(app);
    let handling = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(peer.clone());
        let busy = Busy::new(&handling);
        let response = hyper::service::Service::call(&app, request);
        async move {
            let response = response.await;
            drop(busy);
            response
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper starts this timer when a connection opens and again when it goes idle after a
    // response, so it also ends idle keep-alive connections.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let served = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        served = served => served.context("serving HTTP"),
        () = activity.idle(limits.idle_timeout) => {
            anyhow::bail!("nothing moved for {:?}: closed", limits.idle_timeout)
        }
    }
}

/// When bytes last moved on a connection, and how many requests on it are being handled.
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened`.
    last: AtomicU64,
    handling: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Returns once no request is being handled and nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let quiet = self.quiet_for();
            if self.handling.load(Ordering::Relaxed) == 0 && quiet >= limit {
                return;
            }
            tokio::time::sleep(limit.saturating_sub(quiet).max(Duration::from_millis(10))).await;
        }
    }
}

/// A request being handled: the connection is not idle meanwhile.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.handling.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records when bytes move.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A listener that fails with the queued errors, then waits forever.
    struct Failing(Mutex<VecDeque<io::Error>>);

    impl Accept for Failing {
        type Stream = tokio::net::TcpStream;

        async fn accept(&self) -> io::Result<(Self::Stream, Peer)> {
            let next = self.0.lock().unwrap().pop_front();
            match next {
                Some(error) => Err(error),
                None => std::future::pending().await,
            }
        }
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            handshake_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            evidence_rate: ClientRate {
                per_sec: 10,
                burst: 10,
            },
        }
    }

    /// A burst, then one request per refill; clients count apart, an IPv6 host by its /64; a
    /// table full of busy clients puts new ones in one shared bucket.
    #[test]
    fn each_client_gets_its_own_bucket() {
        let limiter = ClientLimiter::new(ClientRate {
            per_sec: 2,
            burst: 3,
        });
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let a = Peer("192.0.2.1:1000".into()).client();
        let taken: Vec<_> = (0..4).map(|_| limiter.check_at(a, at(0)).is_ok()).collect();
        assert_eq!(taken, [true, true, true, false]);
        assert_eq!(limiter.check_at(a, at(0)), Err(Duration::from_millis(500)));
        assert!(limiter.check_at(a, at(500)).is_ok(), "refilled");
        assert!(limiter.check_at(a, at(500)).is_err());
        let b = Peer("192.0.2.2:1000".into()).client();
        assert!(limiter.check_at(b, at(500)).is_ok(), "another client");
        let same_host = |port| Peer(format!("[2001:db8::{port}]:{port}")).client();
        assert_eq!(same_host(1), same_host(2));
        assert_eq!(Peer("unix".into()).client(), Client::Local);
        let mapped = Peer("[::ffff:192.0.2.1]:9".into()).client();
        assert_eq!(mapped, a);

        let busy = ClientLimiter::new(ClientRate {
            per_sec: 1,
            burst: 1,
        });
        for n in 0..MAX_TRACKED_CLIENTS as u32 {
            let client = Client::Ip(IpAddr::V4(n.into()));
            busy.check_at(client, at(0)).unwrap();
        }
        let newcomer = |n: u32| Client::Ip(IpAddr::V4((u32::MAX - n).into()));
        assert!(busy.check_at(newcomer(0), at(0)).is_ok());
        assert!(busy.check_at(newcomer(1), at(0)).is_err(), "shared bucket");
        let tracked = busy.buckets.lock().unwrap().len();
        assert_eq!(tracked, MAX_TRACKED_CLIENTS + 1);
        // A second later every bucket is full again: they are forgotten to make room.
        assert!(busy.check_at(newcomer(2), at(1000)).is_ok());
        assert_eq!(busy.buckets.lock().unwrap().len(), 1);
    }

    fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn resource_and_pending_connection_errors_pass_the_rest_is_fatal() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_transient(&errno(code)), "{code}");
        }
        for code in [
            libc::ECONNABORTED,
            libc::ECONNRESET,
            libc::EPROTO,
            libc::EINTR,
        ] {
            assert!(is_transient(&errno(code)), "{code}");
        }
        for code in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK, libc::EFAULT] {
            assert!(!is_transient(&errno(code)), "{code}");
        }
    }

    /// A client that stops reading a long response is dropped once nothing has moved for the
    /// idle timeout; a request that takes longer than that to handle is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_readers_are_dropped_slow_handlers_are_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const BIG: usize = 64 << 20;
        let app = axum::Router::new()
            .route("/big", axum::routing::get(|| async { vec![0u8; BIG] }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    "done"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_read_timeout: Duration::from_secs(5),
            ..limits()
        };
        let server = tokio::spawn(serve("test", listener, None, app, limits));

        let ask = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        stalled.write_all(ask("/big").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await; // reads nothing
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut received));
        let _ = read.await.expect("the connection was closed");
        assert!(received.len() < BIG, "the whole response came: not dropped");

        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(ask("/slow").as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.abort();
    }

    /// Out of descriptors, then an aborted connection: the loop goes on. A closed socket: it
    /// stops, and `spawn` reports why.
    #[tokio::test]
    async fn the_loop_outlives_transient_errors_and_reports_a_fatal_one() {
        let errors = [libc::EMFILE, libc::EMFILE, libc::ECONNABORTED, libc::EBADF];
        let listener = Failing(Mutex::new(errors.into_iter().map(errno).collect()));
        let (stopped_tx, mut stopped) = mpsc::unbounded_channel();
        let task = spawn(
            "test",
            listener,
            None,
            axum::Router::new(),
            limits(),
            stopped_tx,
        );
        let error = tokio::time::timeout(Duration::from_secs(5), stopped.recv())
            .await
            .unwrap()
            .unwrap();
        let message = format!("{error:#}");
        assert!(message.contains("test listener stopped"), "{message}");
        assert!(message.contains("Bad file descriptor"), "{message}");
        task.await.unwrap();

        let listener = Failing(Mutex::new([libc::EMFILE].into_iter().map(errno).collect()));
        let (stopped_tx, mut stopped) = mpsc::unbounded_channel();
        let _task = spawn(
            "test",
            listener,
            None,
            axum::Router::new(),
            limits(),
            stopped_tx,
        );
        let waited = tokio::time::timeout(Duration::from_millis(300), stopped.recv()).await;
        assert!(waited.is_err(), "the loop stopped on EMFILE: {waited:?}");
    }
}
