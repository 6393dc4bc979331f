//! Backends for tests: named greeters, echoes, custom handlers, and addresses that
//! refuse or never answer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice::backend::BackendSpec;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Connections one test backend accepts at most.
const MAX_ACCEPTS: usize = 100_000;

type Serve = Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A backend on loopback. Dropping it stops accepting (and closes its listener).
pub struct TestBackend {
    pub addr: SocketAddr,
    pub name: String,
    /// Connections accepted so far (health checks included).
    pub accepted: Arc<AtomicUsize>,
    serve: Serve,
    task: Option<JoinHandle<()>>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl TestBackend {
    /// Greets each connection with `NAME\n`, then echoes until the client finishes.
    pub async fn named(name: &str) -> TestBackend {
        Self::named_on(name, "127.0.0.1:0").await
    }

    /// Echoes every byte back, and half-closes when the client does.
    pub async fn echo() -> TestBackend {
        Self::serving("echo", "127.0.0.1:0", |s| greet_and_echo(s, None)).await
    }

    /// A named backend on a given address (e.g. `[::1]:0`).
    pub async fn named_on(name: &str, bind: &str) -> TestBackend {
        let greeting: Arc<str> = format!("{name}\n").into();
        Self::serving(name, bind, move |s| {
            greet_and_echo(s, Some(Arc::clone(&greeting)))
        })
        .await
    }

    /// A backend that runs `serve` for each accepted connection.
    pub async fn serving<F, Fut>(name: &str, bind: &str, serve: F) -> TestBackend
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let serve: Serve = Arc::new(move |s| Box::pin(serve(s)));
        let listener = listen(bind.parse().expect("backend address"));
        let mut backend = TestBackend {
            addr: listener.local_addr().expect("backend addr"),
            name: name.to_owned(),
            accepted: Arc::new(AtomicUsize::new(0)),
            serve,
            task: None,
        };
        backend.run(listener);
        backend
    }

    fn run(&mut self, listener: TcpListener) {
        let count = Arc::clone(&self.accepted);
        let serve = Arc::clone(&self.serve);
        self.task = Some(tokio::spawn(async move {
            // Bounded in count; in time by the test's runtime, which ends with the test.
            for _ in 0..MAX_ACCEPTS {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(serve(stream));
                    }
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        }));
    }

    /// Closes the listening socket (connections already accepted carry on) and returns
    /// once it is closed: new connections are refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address after [`TestBackend::stop`].
    pub async fn restart(&mut self) {
        let listener = listen(self.addr);
        self.run(listener);
    }

    pub fn spec(&self) -> BackendSpec {
        spec_of(self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A listener with a deep accept queue: Sluice may dial a thousand connections at once,
/// and an overflowing queue makes the kernel answer with SYN cookies that look like
/// connections the backend never accepts.
fn listen(addr: SocketAddr) -> TcpListener {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_nonblocking(true).expect("nonblocking");
    socket.bind(&addr.into()).expect("bind backend");
    socket.listen(4096).expect("listen");
    TcpListener::from_std(socket.into()).expect("tokio listener")
}

async fn greet_and_echo(mut stream: TcpStream, greeting: Option<Arc<str>>) {
    if let Some(greeting) = greeting {
        if stream.write_all(greeting.as_bytes()).await.is_err() {
            return;
        }
    }
    let (mut r, mut w) = stream.split();
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// The spec of a backend at `addr` (weight 1, priority 1).
pub fn spec_of(addr: SocketAddr) -> BackendSpec {
    BackendSpec::new(addr.ip().to_string(), addr.port())
}

/// An address nothing listens on: a socket bound there that never listens, so a connect
/// is refused. It stays bound for the life of the test process (one descriptor), so no
/// other test can take the port meanwhile, as it could a port bound and released.
pub fn dead_addr() -> SocketAddr {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    std::mem::forget(socket);
    addr
}

/// A listener with a zero backlog whose accept queue is full: further connects hang in
/// the handshake. Returns it with the connections that fill it.
pub async fn black_hole() -> (socket2::Socket, SocketAddr, Vec<TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("black hole refused: {e}"),
            Err(_) => return (socket, addr, fillers),
        }
    }
    panic!("the accept queue never filled");
}
