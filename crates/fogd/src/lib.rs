//! `fogd`, FogConnect's server. It carries three services, each a module here with its own flags,
//! its own event loop on its own thread, all stopped by the same signal:
//!
//! - **STUN** (`--stun`): a two-address STUN server (RFC 5389 Binding with RFC 5780 NAT behaviour
//!   discovery, and answers for RFC 3489 clients) on a fog-mio driver;
//! - **signaling** (`--signal`): the `fog_signal` server machine over WebSocket at `/ws`
//!   (default port 7600), `wss://` with `--tls-cert`/`--tls-key`, on a mio loop of its own with
//!   tungstenite and rustls (see the `signal` module);
//! - **TURN** (`--turn`): fog-turn's relay server (RFC 8656 over UDP, `use-auth-secret`
//!   credentials only) on a fog-mio driver that binds each relayed address as it is allocated
//!   and closes it when the allocation ends (see the `turn` module); clients whose UDP is
//!   blocked reach it over TCP on the same port (`--turn-tcp`, a thread of its own: the
//!   `turn_tcp` module). With `--turn-secret` (or
//!   `--turn-secret-file`) signaling hands out credentials and `turn:` URLs for it.
//!
//! With `--cluster redis://HOST:PORT` signaling joins other fogd instances sharing that Redis
//! (presence, aliases and frames between instances; see the `cluster` module and
//! `docs/deploy.md`).
//!
//! Any of them may run alone or together. A bare IP for `--turn` means port 3478; when STUN is
//! on that address too, TURN needs another port (3480 in the examples), since each service has
//! sockets of its own.
//!
//! ```text
//! fogd --stun 192.0.2.1:3478 --stun-alt 192.0.2.2:3479
//! fogd --signal 0.0.0.0:7600 --key server.key --realm signal.example.org \
//!      --tls-cert fullchain.pem --tls-key privkey.pem
//! fogd --stun 192.0.2.1:3478 --signal 192.0.2.1 --turn 192.0.2.1:3480 \
//!      --turn-secret-file turn.secret
//! ```
//!
//! The first serves STUN on all four combinations 192.0.2.1:3478, 192.0.2.1:3479, 192.0.2.2:3478
//! and 192.0.2.2:3479, which is what CHANGE-REQUEST and OTHER-ADDRESS need. The second serves
//! `wss://signal.example.org:7600/ws` with the identity kept in `server.key` (created with mode
//! 0600 on the first run). `fogd --help` lists the flags and their defaults.
//!
//! # Config file
//!
//! `--config fogd.toml` reads the signaling, TURN and cluster settings from a TOML file with a
//! `[signal]`, a `[turn]` and a `[cluster]` table whose keys are the flags' names without the
//! dashes. A flag given on the command
//! line overrides the file; an unknown table or key is an error naming it and its line.
//!
//! ```toml
//! [signal]
//! signal = "0.0.0.0:7600"          # or a bare IP for port 7600
//! key = "/var/lib/fogd/server.key"
//! realm = "signal.example.org"     # default: the signal IP
//! tls-cert = "/etc/fogd/fullchain.pem"
//! tls-key = "/etc/fogd/privkey.pem"
//! max-connections = 20000          # open WebSocket connections
//! max-peers = 16384                # authenticated peers
//! frames-per-second = 20           # per connection, sustained (bursts of 40)
//! max-frame-len = 16384            # bytes; larger frames are closed with 1009
//! max-pending-offers = 8           # unanswered offers to one peer, and from one peer
//! handshake-timeout-ms = 5000      # TLS + HTTP upgrade
//! max-unsent = 131072              # bytes waiting for a slow reader before it is dropped
//!
//! [turn]
//! turn = "192.0.2.1:3480"          # or a bare IP for port 3478
//! turn-secret-file = "/etc/fogd/turn.secret"   # or turn-secret = "..."
//! turn-relay-ip = "192.0.2.1"      # default: the turn IP
//! turn-ports = "49152-65535"       # relayed addresses' ports
//! turn-max-allocations = 1000
//! turn-max-allocations-per-user = 10
//! turn-bandwidth = 1000000         # bytes/s per allocation, both ways, bursts of as much
//!                                  # (at least 65535); 0 for no limit
//! turn-max-lifetime = 3600         # seconds
//! turn-credential-ttl = 86400      # seconds, for the credentials signaling hands out
//! turn-allow-peer = ["10.0.0.0/8"] # peers to relay to although reserved or denied
//! turn-deny-peer = ["198.51.100.0/24"]  # peers refused besides the reserved classes
//! turn-tcp = "192.0.2.1:3480"      # TURN over TCP; default: the turn address; "off" for none
//! turn-tcp-max-per-ip = 16         # TCP connections at once from one IP
//! turn-tcp-idle = 60               # seconds a connection without an allocation may be silent
//! turn-tls = "192.0.2.1:5349"      # TURN over TLS with tls-cert/tls-key; default: off
//!
//! [cluster]
//! cluster = "redis://10.0.0.5:6379"  # join the instances sharing this Redis
//! cluster-instance = "fogd-1"        # unique in the cluster; default: the signal address
//! cluster-advertise = ["turn:192.0.2.1:3480"]  # default: the turn-url list
//! cluster-region = "eu-west"                   # relays of this region are handed out first
//! cluster-queue = 16384              # questions to Redis waiting at once
//! ```
//!
//! TURN refuses (403) peers on unspecified, loopback, link-local, multicast, broadcast, private
//! and carrier-grade addresses (IPv6 and IPv4-mapped forms too) and fogd's own STUN and TURN
//! ports, unless `--turn-allow-peer` opens a range (fogd's own ports stay refused). Every UDP
//! socket asks for `--udp-recv-buffer` / `--udp-send-buffer` bytes of kernel buffer (4 MiB each by
//! default, like coturn); the `STUN listening` and `TURN listening` lines say what was granted.
//!
//! # Operation
//!
//! - Logs go to stderr through `tracing`; `RUST_LOG` filters them (default `info`). Signaling
//!   logs each connection, authentication and close (with code and reason) at `info`.
//! - SIGINT or SIGTERM stops every service; each logs its final counters (`STUN stopped
//!   received=... answered=...`, `signal stopped accepted=... upgraded=... frames_in=...`,
//!   `TURN stopped allocated=... relayed_to_peer=... relayed_to_client=...`) before
//!   fogd exits 0; a second signal exits at once. Open WebSocket connections get a close frame
//!   with 1001.
//! - Exit status 1 with a message on stderr when a service cannot start (a bind fails, an
//!   address is unusable, the config file or key file is bad), 2 for a command-line error.
//!
//! # In another process
//!
//! The `fogd` binary is a thin `main` over this library: [`run`] is fogd with its signal
//! handlers. [`Services::start`] starts the same services on threads of the calling process
//! and [`Services::stop`] ends them, for a program that wants a server of its own on loopback
//! without a second binary (`fogconnect demo` does this):
//!
//! ```no_run
//! use clap::Parser as _;
//!
//! let cli = fogd::Cli::try_parse_from(["fogd", "--signal", "127.0.0.1:7600"])?;
//! let services = fogd::Services::start(&cli)?;
//! // ... connect nodes to ws://127.0.0.1:7600/ws ...
//! services.stop()?;
//! # Ok::<(), fogd::BoxError>(())
//! ```

mod cli;
mod cluster;
mod config;
mod fastlink;
mod hop_trace;
mod resp;
mod signal;
mod signals;
mod stun;
mod turn;
mod turn_tcp;
mod web;

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};

pub use crate::cli::Cli;
use crate::config::FileConfig;
use crate::signal::SignalService;
use crate::signals::{ShutdownSignals, Stop};
use crate::stun::StunService;
use crate::turn::TurnService;

/// Why fogd could not start or a service failed: a message for stderr.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Warns when the OS granted less than `--udp-recv-buffer` / `--udp-send-buffer` asked for
/// (Linux reports twice what it grants, so anything at or above the request is fine).
pub(crate) fn warn_small_buffers(
    service: &str,
    asked: &cli::SocketArgs,
    recv_buffer: usize,
    send_buffer: usize,
) {
    if recv_buffer < asked.udp_recv_buffer || send_buffer < asked.udp_send_buffer {
        tracing::warn!(
            service,
            asked_recv = asked.udp_recv_buffer,
            granted_recv = recv_buffer,
            asked_send = asked.udp_send_buffer,
            granted_send = send_buffer,
            "the OS granted smaller UDP socket buffers than asked; raise net.core.rmem_max and \
             net.core.wmem_max (sysctl) to avoid drops under load"
        );
    }
}

/// fogd as the binary runs it: the services `cli` configures, until SIGINT or SIGTERM stops
/// them (or one fails, which stops the others).
pub fn run(cli: &Cli) -> Result<(), BoxError> {
    // Installed before the services bind, so that a signal during start-up is held until they
    // can be stopped.
    let signals = ShutdownSignals::install()
        .map_err(|e| format!("installing the SIGINT/SIGTERM handlers: {e}"))?;
    let mut services = Services::start(cli)?;
    signals
        .stop_on_signal(services.stops.clone())
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    services.wait()
}

/// fogd's services, bound and serving, each on a thread of its own in this process. Dropping
/// it stops them without waiting.
pub struct Services {
    /// One per service: sets its stop flag and wakes its loop.
    stops: Vec<Stop>,
    threads: Vec<JoinHandle<()>>,
    /// Each service's thread sends its outcome here when its loop ends.
    finished: Receiver<Result<(), String>>,
}

impl Services {
    /// Binds every service `cli` configures (all of them before serving any, so that a bad
    /// address fails the whole start), then serves each on a thread of its own.
    pub fn start(cli: &Cli) -> Result<Services, BoxError> {
        let (signal_args, turn_args, cluster_args) = match &cli.config {
            Some(path) => {
                let file = FileConfig::load(path)?;
                (
                    file.signal.under(path, &cli.signal)?,
                    file.turn.under(path, &cli.turn)?,
                    file.cluster.under(&cli.cluster),
                )
            }
            None => (cli.signal.clone(), cli.turn.clone(), cli.cluster.clone()),
        };
        let stun_config = stun::config(&cli.stun)?;
        let mut signal_settings = signal::settings(&signal_args)?;
        let mut turn_config = None;
        let mut turn_tcp = None;
        if let Some(turn) = turn::settings(&turn_args)? {
            turn_config = turn.server;
            turn_tcp = turn.tcp;
            match &mut signal_settings {
                Some(signal) => signal.relay = Some(turn.relay),
                None if turn_config.is_none() => {
                    return Err("--turn-secret with --turn-url only serves signaling, \
                                and no --signal is given"
                        .into());
                }
                None => {}
            }
        }
        if let Some(url) = &cluster_args.cluster {
            let Some(signal) = &mut signal_settings else {
                return Err("--cluster joins signaling to a cluster; give --signal too".into());
            };
            let advertise = if cluster_args.cluster_advertise.is_empty() {
                signal
                    .relay
                    .as_ref()
                    .map(|r| r.urls.clone())
                    .unwrap_or_default()
            } else {
                cluster_args.cluster_advertise.clone()
            };
            signal.cluster = Some(cluster::Settings {
                url: url.clone(),
                instance: cluster_args
                    .cluster_instance
                    .clone()
                    .unwrap_or_else(|| signal.listen.to_string()),
                advertise,
                region: cluster_args.cluster_region.clone(),
                queue: cluster_args.cluster_queue.unwrap_or(cluster::DEFAULT_QUEUE),
            });
            if let Some(c) = &signal.cluster {
                if !cluster::valid_instance(&c.instance) {
                    return Err(cluster::StartError::Instance(c.instance.clone()).into());
                }
                if let Some(region) = c.region.as_ref().filter(|r| !cluster::valid_region(r)) {
                    return Err(format!(
                        "--cluster-region {region:?}: 1 to 64 letters, digits or .:_-"
                    )
                    .into());
                }
                redis::Client::open(c.url.as_str())
                    .map_err(|e| cluster::StartError::Url(c.url.clone(), e.to_string()))?;
            }
        }
        if let (Some(turn), Some(stun)) = (&turn_config, &stun_config) {
            if let Some(clash) = stun
                .local_addrs()
                .into_iter()
                .find(|&a| turn::same_socket(a, turn.listen))
            {
                return Err(format!(
                    "--turn {} is STUN's address {clash} too; give TURN another port, e.g. {}",
                    turn.listen,
                    std::net::SocketAddr::new(turn.listen.ip(), 3480)
                )
                .into());
            }
        }
        if stun_config.is_none() && signal_settings.is_none() && turn_config.is_none() {
            return Err(
                "no service configured: give --stun, --signal or --turn (see --help)".into(),
            );
        }

        // The relay must not reach fogd's other UDP services (RFC 8656 §21.3; its own listen
        // address is refused by the server machine itself).
        if let (Some(turn), Some(stun)) = (&mut turn_config, &stun_config) {
            turn.peers.own.extend(stun.local_addrs());
        }

        // TURN over TLS uses signaling's certificate (`--tls-cert`, `--tls-key`).
        let turn_tls = match (
            &turn_args.turn_tls,
            &signal_args.tls_cert,
            &signal_args.tls_key,
        ) {
            (None, ..) => None,
            (Some(_), Some(cert), Some(key)) => Some(signal::tls_config(cert, key)?),
            (Some(_), ..) => return Err("--turn-tls needs --tls-cert and --tls-key".into()),
        };
        let sockets = &cli.sockets;
        let stun = stun_config
            .map(|c| StunService::bind(c, sockets))
            .transpose()?;
        let mut signal = signal_settings.map(SignalService::bind).transpose()?;
        let turn = turn_config
            .map(|c| TurnService::bind(c, turn_tcp, turn_tls, sockets))
            .transpose()?;
        if let (Some(signal), Some(turn)) = (&mut signal, &turn) {
            signal.set_load(turn.load());
            signal.set_alternate(turn.alternate());
        }

        let (done, finished) = mpsc::channel::<Result<(), String>>();
        let mut services = Services {
            stops: Vec::new(),
            threads: Vec::new(),
            finished,
        };
        // A service whose thread cannot start stops those already serving (by the drop).
        if let Some(stun) = stun {
            let handle = stun.handle();
            services.stops.push(Arc::new(move || handle.shutdown()));
            let done = done.clone();
            services
                .threads
                .push(thread::Builder::new().name("stun".into()).spawn(move || {
                    let result = stun.run().map(|report| report.log());
                    let _ =
                        done.send(result.map_err(|e| format!("STUN: the event loop failed: {e}")));
                })?);
        }
        if let Some(signal) = signal {
            let handle = signal.handle();
            services.stops.push(Arc::new(move || handle.stop()));
            let done = done.clone();
            services
                .threads
                .push(
                    thread::Builder::new()
                        .name("signal".into())
                        .spawn(move || {
                            let result = signal.run().map(|report| report.log());
                            let _ = done.send(
                                result
                                    .map_err(|e| format!("signaling: the event loop failed: {e}")),
                            );
                        })?,
                );
        }
        if let Some(turn) = turn {
            let handle = turn.handle();
            services.stops.push(Arc::new(move || handle.shutdown()));
            let done = done.clone();
            services
                .threads
                .push(thread::Builder::new().name("turn".into()).spawn(move || {
                    let result = turn.run().map(|report| report.log());
                    let _ =
                        done.send(result.map_err(|e| format!("TURN: the event loop failed: {e}")));
                })?);
        }
        Ok(services)
    }

    /// Stops every service and waits for each to end; the first failure, if one failed.
    pub fn stop(mut self) -> Result<(), BoxError> {
        self.stop_all();
        self.wait()
    }

    /// Asks every service to stop; a wake-up that fails leaves the flag set, which the loop
    /// sees at its next turn.
    fn stop_all(&self) {
        for stop in &self.stops {
            if let Err(e) = stop() {
                tracing::warn!(error = %e, "waking a service for shutdown failed");
            }
        }
    }

    /// Waits until every service has ended. The first to fail stops the others.
    fn wait(&mut self) -> Result<(), BoxError> {
        let mut first_error = None;
        for _ in 0..self.threads.len() {
            let Ok(result) = self.finished.recv() else {
                // A thread that panicked drops its sender unsent; the join below says so.
                break;
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "a service failed; stopping the others");
                self.stop_all();
                first_error.get_or_insert(e);
            }
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                first_error.get_or_insert_with(|| "a service thread panicked".to_owned());
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_all();
        }
    }
}
