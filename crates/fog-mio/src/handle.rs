//! Waking and stopping a driver from another thread.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cloneable, `Send + Sync` handle that wakes or stops a [`Driver`](crate::Driver) from any
/// thread; made by [`Driver::handle`](crate::Driver::handle).
///
/// It is built on [`mio::Waker`], so a driver blocked in `poll` returns at once.
#[derive(Debug, Clone)]
pub struct Handle {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    waker: mio::Waker,
    shutdown: AtomicBool,
}

impl Handle {
    pub(crate) fn new(waker: mio::Waker) -> Self {
        Self {
            inner: Arc::new(Shared {
                waker,
                shutdown: AtomicBool::new(false),
            }),
        }
    }

    /// Stops the driver: [`Driver::run`](crate::Driver::run) returns, and every later turn returns
    /// [`Status::Shutdown`](crate::Status::Shutdown) without waiting. Shutdown cannot be undone.
    ///
    /// The flag is set even when waking fails; the driver then sees it at its next turn.
    pub fn shutdown(&self) -> io::Result<()> {
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.waker.wake()
    }

    /// Makes the driver's current (or next) wait return early, without stopping it; an
    /// embedder stepping the driver with [`Driver::turn`](crate::Driver::turn) uses this to get
    /// control back, for example to apply commands another thread queued.
    pub fn wake(&self) -> io::Result<()> {
        self.inner.waker.wake()
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutdown(&self) -> bool {
        self.inner.shutdown.load(Ordering::Acquire)
    }
}
