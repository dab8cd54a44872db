//! The accept loop: HTTP/1.1 connections served by hyper with a header-read timeout (which also
//! closes connections idle between requests), a limit on open connections that closes the
//! longest-idle connection to make room for a new one, and a shutdown with a deadline.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::Service;

/// How long the process waits, after the connections are done, for the model worker to finish
/// the batch it is running.
pub const WORKER_GRACE: Duration = Duration::from_secs(4);

/// The connection limits (`--header-timeout-s`, `--max-connections`, `--drain-s`).
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub drain: Duration,
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests in progress on it: from a complete header to the answer.
    busy: AtomicUsize,
    /// Milliseconds since the registry's epoch when it last became idle (opened, or answered).
    idle_since: AtomicU64,
    /// Chosen to make room, or closed by a shutdown: not chosen again.
    closing: AtomicBool,
    /// Closes it at once when notified.
    close: Notify,
}

/// The open connections.
struct Registry {
    epoch: Instant,
    open: Mutex<(u64, HashMap<u64, Arc<Conn>>)>,
}

impl Registry {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn add(self: &Arc<Self>) -> Registered {
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        let mut open = self.open.lock().expect("connection registry");
        let id = open.0;
        open.0 += 1;
        open.1.insert(id, conn.clone());
        Registered {
            registry: self.clone(),
            id,
            conn,
        }
    }

    /// Closes the connection idle for longest; false when every one has a request in progress.
    fn close_longest_idle(&self) -> bool {
        let open = self.open.lock().expect("connection registry");
        let victim = open
            .1
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.closing.load(Ordering::Acquire))
            .min_by_key(|c| c.idle_since.load(Ordering::Acquire));
        victim.is_some_and(|c| {
            c.closing.store(true, Ordering::Release);
            c.close.notify_one();
            true
        })
    }

    /// Closes every connection with no request in progress.
    fn close_idle(&self) {
        let open = self.open.lock().expect("connection registry");
        for c in open.1.values() {
            if c.busy.load(Ordering::Acquire) == 0 {
                c.closing.store(true, Ordering::Release);
                c.close.notify_one();
            }
        }
    }

    fn len(&self) -> usize {
        self.open.lock().expect("connection registry").1.len()
    }
}

/// A connection's place in the registry, given up when its task ends (or is aborted).
struct Registered {
    registry: Arc<Registry>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut open) = self.registry.open.lock() {
            open.1.remove(&self.id);
        }
    }
}

/// Marks a connection busy while a request is in progress on it.
struct Busy {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Busy {
    fn new(conn: &Arc<Conn>, registry: &Arc<Registry>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Self {
            conn: conn.clone(),
            registry: registry.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.registry.now(), Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until SIGTERM or Ctrl-C, then calls `on_stop` (after which the app
/// answers readiness checks and new work with 503), closes the idle connections, lets the
/// requests in progress finish for at most `limits.drain` (a second signal cuts it short) and
/// closes whatever is left. Connections opened during the drain get one answer each (a load
/// balancer's readiness check sees the 503; a client, 503 with Retry-After rather than a refused
/// connection) and are closed; the drain does not wait for them.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, on_stop: impl FnOnce()) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        open: Mutex::new((0, HashMap::new())),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut signal = pin!(super::shutdown());
    loop {
        while tasks.try_join_next().is_some() {}
        let stream = tokio::select! {
            () = &mut signal => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // the service goes on.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the limit: make room by closing the connection idle for longest; when every
                // one is busy, wait for one to end (each request is bounded by --timeout-s).
                registry.close_longest_idle();
                tokio::select! {
                    () = &mut signal => break,
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        tasks.spawn(connection(
            http.clone(),
            stream,
            app.clone(),
            registry.add(),
            stop_rx.clone(),
            permit,
        ));
    }
    on_stop();
    let _ = stop_tx.send(true);
    registry.close_idle();
    // One request per connection opened during the drain; never stopped by the signal, which
    // would close them before their request is read.
    let mut late_http = http.clone();
    late_http.keep_alive(false);
    let (_late_stop_tx, late_stop_rx) = watch::channel(false);
    let mut late = JoinSet::new();
    let drained = {
        let mut all = pin!(async { while tasks.join_next().await.is_some() {} });
        let mut deadline = pin!(tokio::time::sleep(limits.drain));
        let mut second = pin!(super::shutdown());
        loop {
            while late.try_join_next().is_some() {}
            tokio::select! {
                () = &mut all => break true,
                () = &mut deadline => break false,
                () = &mut second => break false,
                r = listener.accept() => {
                    let Ok((stream, _)) = r else { continue };
                    // At the limit, a new connection is simply closed.
                    let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
                    late.spawn(connection(
                        late_http.clone(),
                        stream,
                        app.clone(),
                        registry.add(),
                        late_stop_rx.clone(),
                        permit,
                    ));
                }
            }
        }
    };
    drop(listener);
    late.abort_all();
    if !drained {
        eprintln!(
            "closing {} connection(s) with requests still in progress",
            registry.len()
        );
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    while late.join_next().await.is_some() {}
}

/// Serves one connection until it ends, is closed to make room or by the shutdown's deadline, or
/// (after the stop signal) has answered the request in progress.
async fn connection(
    http: http1::Builder,
    stream: TcpStream,
    app: Router,
    me: Registered,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let (conn, registry) = (me.conn.clone(), me.registry.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::new(&conn, &registry);
        let mut app = app.clone();
        async move {
            let answer = app.call(req).await;
            drop(busy);
            answer
        }
    });
    let mut served = pin!(http.serve_connection(TokioIo::new(stream), service));
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = served.as_mut() => return,
            () = me.conn.close.notified() => return,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                // Answers the request in progress, if any, with `Connection: close`, then ends.
                served.as_mut().graceful_shutdown();
            }
        }
    }
}
