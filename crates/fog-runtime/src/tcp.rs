//! The TCP connections the node's port mapper asks for (UPnP IGD's HTTP: the device
//! description and each SOAP action, one short exchange per connection), each on a thread of
//! its own: they are rare (a handful at start and at each renewal) and short, and a blocking
//! socket keeps this small. The mapper's own timeouts bound every exchange; a thread ends when
//! the node closes its connection or the peer closes it.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use fogconnect::{Node, TcpCommand, TcpId, TcpInput};

/// How long connecting may take (the mapper's HTTP timeout, 3 s, ends it sooner if needed).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a connection's thread looks for bytes to write between reads.
const READ_SLICE: Duration = Duration::from_millis(20);
/// A thread gives up on a connection after this long in any case.
const LIFETIME: Duration = Duration::from_secs(10);

/// What a connection's thread reports.
pub(crate) enum News {
    Connected,
    Data(Vec<u8>),
    Closed,
    Failed,
}

/// The node's TCP connections.
pub(crate) struct Tcp {
    news: Sender<(TcpId, News)>,
    /// Bytes to write, per open connection; dropping the sender ends the thread.
    writers: BTreeMap<TcpId, Sender<Vec<u8>>>,
    wake: fog_mio::Handle,
}

impl Tcp {
    pub(crate) fn new(wake: fog_mio::Handle) -> (Tcp, Receiver<(TcpId, News)>) {
        let (news, rx) = mpsc::channel();
        let tcp = Tcp {
            news,
            writers: BTreeMap::new(),
            wake,
        };
        (tcp, rx)
    }

    /// Carries out every TCP command the node has.
    pub(crate) fn drain(&mut self, node: &mut Node) {
        while let Some(command) = node.poll_tcp() {
            match command {
                TcpCommand::Connect { id, remote } => {
                    let (tx, rx) = mpsc::channel();
                    let news = self.news.clone();
                    let wake = self.wake.clone();
                    let spawned = thread::Builder::new()
                        .name("fog-runtime-tcp".into())
                        .spawn(move || run(id, SocketAddr::V4(remote), rx, news, wake));
                    if spawned.is_ok() {
                        self.writers.insert(id, tx);
                    } else {
                        node.handle_tcp(Instant::now(), id, TcpInput::Failed);
                    }
                }
                TcpCommand::Send { id, data } => {
                    if let Some(writer) = self.writers.get(&id) {
                        let _ = writer.send(data);
                    }
                }
                TcpCommand::Close { id } => {
                    self.writers.remove(&id);
                }
            }
        }
    }

    /// Hands a thread's news to the node (nothing about a connection it closed).
    pub(crate) fn deliver(&mut self, node: &mut Node, id: TcpId, news: News) {
        if !self.writers.contains_key(&id) {
            return;
        }
        let now = Instant::now();
        match news {
            News::Connected => node.handle_tcp(now, id, TcpInput::Connected),
            News::Data(bytes) => node.handle_tcp(now, id, TcpInput::Data(&bytes)),
            News::Closed => {
                self.writers.remove(&id);
                node.handle_tcp(now, id, TcpInput::Closed);
            }
            News::Failed => {
                self.writers.remove(&id);
                node.handle_tcp(now, id, TcpInput::Failed);
            }
        }
    }
}

/// One connection: connect, then write what comes and read what arrives until either side
/// closes.
fn run(
    id: TcpId,
    remote: SocketAddr,
    writes: Receiver<Vec<u8>>,
    news: Sender<(TcpId, News)>,
    wake: fog_mio::Handle,
) {
    let tell = |n: News| {
        let _ = news.send((id, n));
        let _ = wake.wake();
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&remote, CONNECT_TIMEOUT) else {
        tell(News::Failed);
        return;
    };
    if stream.set_read_timeout(Some(READ_SLICE)).is_err() {
        tell(News::Failed);
        return;
    }
    tell(News::Connected);
    let started = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    while started.elapsed() < LIFETIME {
        loop {
            match writes.try_recv() {
                Ok(data) => {
                    if stream.write_all(&data).is_err() {
                        tell(News::Failed);
                        return;
                    }
                }
                Err(TryRecvError::Empty) => break,
                // The node closed it.
                Err(TryRecvError::Disconnected) => return,
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                tell(News::Closed);
                return;
            }
            Ok(n) => tell(News::Data(buf[..n].to_vec())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                tell(News::Failed);
                return;
            }
        }
    }
    tell(News::Failed);
}
