//! SIGINT and SIGTERM to [`fog_mio::Handle::shutdown`], without an async runtime: signal-hook
//! records the signal from its handler and a thread of ours blocks on its iterator, then wakes
//! every service's driver through its handle.

use std::io;
use std::thread;

use fog_mio::Handle;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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

    /// Starts the thread that, at the first signal, shuts every driver in `handles` down (each
    /// service then returns from its loop and reports). A second signal exits at once, for a
    /// service that does not stop.
    pub(crate) fn stop_on_signal(mut self, handles: Vec<Handle>) -> io::Result<()> {
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
                    for handle in &handles {
                        if let Err(e) = handle.shutdown() {
                            // The flag is set anyway; the driver sees it at its next turn.
                            tracing::warn!(error = %e, "waking a driver for shutdown failed");
                        }
                    }
                }
            })?;
        Ok(())
    }
}
