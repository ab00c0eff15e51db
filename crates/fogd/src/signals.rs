//! SIGINT and SIGTERM to every service's stop call, without an async runtime: signal-hook
//! records the signal from its handler and a thread of ours blocks on its iterator, then wakes
//! each service's loop ([`fog_mio::Handle::shutdown`] for STUN, a `mio::Waker` for signaling).

use std::io;
use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Stops one service's loop from another thread: sets its flag and wakes it.
pub(crate) type Stop = std::sync::Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// The signal handlers, installed; [`stop_on_signal`](Self::stop_on_signal) hands them the
/// drivers to stop.
pub(crate) struct ShutdownSignals {
    signals: Signals,
}

impl ShutdownSignals {
    /// Installs the handlers. Done before the services bind, so that a signal during start-up
    /// is held until the drivers exist rather than killing the process half-started.
    pub(crate) fn install() -> io::Result<Self> {
        Ok(Self {
            signals: Signals::new([SIGINT, SIGTERM])?,
        })
    }

    /// Starts the thread that, at the first signal, calls every stop in `stops` (each service
    /// then returns from its loop and reports). A second signal exits at once, for a service
    /// that does not stop.
    pub(crate) fn stop_on_signal(mut self, stops: Vec<Stop>) -> io::Result<()> {
        thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                let mut seen = false;
                for signal in self.signals.forever() {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    if seen {
                        tracing::warn!(signal = name, "second signal, exiting now");
                        // 128 + n is how a shell reports death by signal n.
                        std::process::exit(128 + signal);
                    }
                    seen = true;
                    tracing::info!(signal = name, "shutting down");
                    for stop in &stops {
                        if let Err(e) = stop() {
                            // The flag is set anyway; the loop sees it at its next turn.
                            tracing::warn!(error = %e, "waking a service for shutdown failed");
                        }
                    }
                }
            })?;
        Ok(())
    }
}
