//! `fogconnect listen` and `fogconnect offer`: two peers meet through a signaling server and
//! exchange an offer and an answer.
//!
//! Each side binds one UDP socket on the interface that reaches the server and describes it: a
//! host candidate (RFC 8445 §5.1.1.1) with its RFC 8445 §5.1.2.1 priority, fresh connectivity-check
//! credentials (§5.3), the transports offered and the application's service number. The
//! description is what the connectivity machine will use to punch; today the commands stop once
//! the two descriptions have crossed.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use fog_signal::client::{ClientConfig, Event};
use fog_signal::msg::{Candidate, CandidateKind, Credentials, Description, Transport};
use fog_signal::{KeyPair, PeerId, keyfile};
use serde_json::json;

use crate::cli::{ListenArgs, OfferArgs, PeerArgs};
use crate::signal::{Connection, SignalError};

/// RFC 8445 §5.1.2.1 priority of a host candidate of component 1: type preference 126, local
/// preference 65535.
const HOST_PRIORITY: u32 = (126 << 24) | (65_535 << 8) | (256 - 1);

/// What the peer commands share: the identity, the signaling connection and a UDP socket.
struct Peer {
    connection: Connection,
    /// Kept open while the command runs, so that the host candidate is real.
    socket: UdpSocket,
    /// This node's peer ID.
    me: PeerId,
}

/// Random bytes from the OS for keys, nonces and check credentials; only the binary reads them.
// A binary may read the OS random source; protocol crates take seeds instead.
#[allow(clippy::disallowed_methods)]
pub(crate) fn os_random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("the OS random source failed: {e}"))?;
    Ok(bytes)
}

/// The identity: loaded from `--key`, created there (mode 0600) when the file does not exist, or
/// a new one for this run.
pub(crate) fn identity(path: Option<&Path>) -> Result<KeyPair, String> {
    let Some(path) = path else {
        return Ok(KeyPair::from_seed(&os_random()?));
    };
    if path.exists() {
        return keyfile::load(path).map_err(|e| format!("{}: {e}", path.display()));
    }
    let key = KeyPair::from_seed(&os_random()?);
    keyfile::save(path, &key).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

/// ICE credentials (RFC 8445 §5.3): 8 characters of username fragment (≥ 4 required) and 24 of
/// password (≥ 22), from the `ice-char` alphabet, each character 6 random bits.
fn credentials() -> Result<Credentials, String> {
    const ICE_CHARS: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: [u8; 32] = os_random()?;
    let text: String = bytes
        .iter()
        .map(|b| char::from(ICE_CHARS[usize::from(b & 63)]))
        .collect();
    Ok(Credentials {
        ufrag: text[..8].to_owned(),
        pwd: text[8..].to_owned(),
    })
}

impl Peer {
    // The driver reads the clock.
    #[allow(clippy::disallowed_methods)]
    fn open(args: &PeerArgs, alias: Option<&str>, deadline: Instant) -> Result<Peer, String> {
        let key = identity(args.signaling.key.as_deref())?;
        let me = key.peer_id();
        let mut config = ClientConfig::new(key, args.signaling.signal.realm(), os_random()?);
        config.alias = alias.map(str::to_owned);
        config.server = args.signaling.server_key;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let mut connection = Connection::open(
            &args.signaling.signal,
            &tls_roots(&args.signaling)?,
            config,
            timeout,
        )
        .map_err(|e| e.to_string())?;
        let local = connection.local_addr();
        let socket = UdpSocket::bind(SocketAddr::new(local.ip(), 0))
            .map_err(|e| format!("binding a UDP socket on {}: {e}", local.ip()))?;
        let mut refused = None;
        let (server, bound_alias) = connection
            .wait_for(
                deadline,
                |event| match event {
                    Event::Authenticated { server, alias } => Some((*server, alias.clone())),
                    _ => None,
                },
                |event| match event {
                    Event::Error { code, message, .. } => {
                        refused = Some(format!("{code:?}: {message}"));
                        Ok(())
                    }
                    _ => Ok(()),
                },
            )
            .map_err(|e| match &refused {
                Some(why) => format!("{e} (the server said {why})"),
                None => e.to_string(),
            })?;
        // The server authenticates a key whose alias claim it refuses, without the alias.
        if let Some(wanted) = alias {
            if bound_alias.as_deref() != Some(wanted.to_lowercase().as_str()) {
                // The server's error saying why follows its welcome.
                if refused.is_none() {
                    let soon = deadline.min(Instant::now() + Duration::from_secs(2));
                    refused = connection
                        .wait_for(
                            soon,
                            |event| match event {
                                Event::Error { code, message, .. } => {
                                    Some(format!("{code:?}: {message}"))
                                }
                                _ => None,
                            },
                            |_| Ok(()),
                        )
                        .ok();
                }
                connection.close();
                return Err(match refused {
                    Some(why) => format!("the alias {wanted} was refused ({why})"),
                    None => format!("the alias {wanted} was not bound"),
                });
            }
        }
        progress(&format!(
            "authenticated to {} (server {}) as {me}{}",
            args.signaling.signal,
            server.short(),
            bound_alias
                .map(|a| format!(", alias {a}"))
                .unwrap_or_default()
        ));
        Ok(Peer {
            connection,
            socket,
            me,
        })
    }

    fn description(&self, service: u16, transports: &[Transport]) -> Result<Description, String> {
        let addr = self
            .socket
            .local_addr()
            .map_err(|e| format!("reading the UDP socket's address: {e}"))?;
        Ok(Description {
            candidates: vec![Candidate {
                kind: CandidateKind::Host,
                addr,
                priority: HOST_PRIORITY,
                related: None,
            }],
            nat: None,
            transports: transports.to_vec(),
            credentials: credentials()?,
            service,
            // `listen` and `offer` exercise signaling only; no session follows.
            seal: None,
            quic: None,
            rtc: None,
        })
    }
}

/// A progress line on stderr (the results go to stdout).
fn progress(line: &str) {
    eprintln!("fogconnect: {line}");
}

/// One result line on stdout; a closed stdout (`| head -1`) is not an error.
fn output(line: &str) -> Result<(), String> {
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing the result: {e}")),
    }
}

/// A description for people: its candidates, transports and service.
fn summary(description: &Description) -> String {
    let mut text = String::new();
    for (i, c) in description.candidates.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(text, "{sep}{:?} {}", c.kind, c.addr);
    }
    if description.candidates.is_empty() {
        text.push_str("no candidates yet");
    }
    let transports: Vec<String> = description
        .transports
        .iter()
        .map(|t| {
            serde_json::to_value(t).map_or_else(
                |_| format!("{t:?}"),
                |v| v.as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let _ = write!(
        text,
        "; transports {}; service {}",
        if transports.is_empty() {
            "none".to_owned()
        } else {
            transports.join(",")
        },
        description.service
    );
    text
}

/// The deadline for `timeout` from now, or a year away for "no timeout".
// The driver reads the clock.
#[allow(clippy::disallowed_methods)]
fn deadline(timeout: Option<Duration>) -> Instant {
    let now = Instant::now();
    now + timeout.unwrap_or(Duration::from_secs(365 * 86_400))
}

/// `fogconnect listen`: authenticate (claiming `--alias`), then answer offers until `--count`
/// have been answered or `--timeout` passes.
pub(crate) fn listen(args: &ListenArgs) -> Result<(), String> {
    let deadline = deadline(args.peer.signaling.timeout);
    let mut peer = Peer::open(&args.peer, args.alias.as_deref(), deadline)?;
    if args.peer.signaling.json {
        output(
            &json!({"event": "listening", "peer": peer.me.to_string(), "alias": args.alias})
                .to_string(),
        )?;
    } else {
        output(&format!("listening as {}", peer.me))?;
    }
    let mut answered = 0u64;
    while args.count.is_none_or(|count| answered < count) {
        let event = peer.connection.next_event(deadline).map_err(|e| match e {
            SignalError::Timeout => format!("no offer within the timeout ({answered} answered)"),
            e => e.to_string(),
        })?;
        match event {
            Event::Offer {
                session,
                from,
                description,
            } => {
                let answer = peer.description(description.service, &args.peer.transports)?;
                peer.connection
                    .client()
                    .answer(session, answer.clone())
                    .map_err(|e| format!("answering: {e:?}"))?;
                peer.connection.flush().map_err(|e| e.to_string())?;
                answered += 1;
                if args.peer.signaling.json {
                    output(
                        &json!({
                            "event": "offer",
                            "session": session.to_string(),
                            "from": from.to_string(),
                            "offer": description,
                            "answer": answer,
                        })
                        .to_string(),
                    )?;
                } else {
                    output(&format!(
                        "offer from {from} (session {session}): {}",
                        summary(&description)
                    ))?;
                    output(&format!("answered with: {}", summary(&answer)))?;
                }
            }
            Event::Error { code, message, .. } => {
                progress(&format!("server error {code:?}: {message}"))
            }
            Event::Failed { code } => return Err(format!("signaling failed ({code:?})")),
            _ => {}
        }
    }
    peer.connection.close();
    Ok(())
}

/// `fogconnect offer`: authenticate, resolve the target (a peer ID, or an alias by lookup), send
/// an offer and wait for the answer.
pub(crate) fn offer(args: &OfferArgs) -> Result<(), String> {
    let deadline = deadline(Some(
        args.peer
            .signaling
            .timeout
            .unwrap_or(Duration::from_secs(30)),
    ));
    let mut peer = Peer::open(&args.peer, None, deadline)?;
    let timeout = |e: SignalError, what: &str| match e {
        SignalError::Timeout => format!("timed out waiting for {what}"),
        e => e.to_string(),
    };
    let target = match args.target.parse::<PeerId>() {
        Ok(id) => id,
        Err(_) => {
            let request = peer
                .connection
                .client()
                .lookup(&args.target)
                .map_err(|e| format!("lookup: {e:?}"))?;
            let mut failure = None;
            let found = peer
                .connection
                .wait_for(
                    deadline,
                    |event| match event {
                        Event::LookupResult {
                            request: r,
                            peer,
                            online,
                        } if *r == request => Some((*peer, *online)),
                        _ => None,
                    },
                    |event| {
                        if let Event::Error {
                            request: Some(r),
                            code,
                            message,
                        } = event
                        {
                            if r == request {
                                failure = Some(format!("{code:?}: {message}"));
                                return Err(SignalError::Protocol(String::new()));
                            }
                        }
                        Ok(())
                    },
                )
                .map_err(|e| match failure.take() {
                    Some(why) => format!("looking up {}: {why}", args.target),
                    None => timeout(e, "the lookup"),
                })?;
            match found {
                (Some(id), true) => id,
                (Some(id), false) => return Err(format!("{} ({id}) is not online", args.target)),
                (None, _) => return Err(format!("no peer is known as {}", args.target)),
            }
        }
    };
    let description = peer.description(args.service, &args.peer.transports)?;
    let request = peer
        .connection
        .client()
        .connect(target, description.clone())
        .map_err(|e| format!("connect: {e:?}"))?;
    progress(&format!(
        "offer sent to {target}: {}",
        summary(&description)
    ));
    let mut failure = None;
    let mut our_session = None;
    let (session, answer) = peer
        .connection
        .wait_for(
            deadline,
            |event| match event {
                Event::Answer {
                    session,
                    from,
                    description,
                } if *from == target => Some((*session, description.clone())),
                _ => None,
            },
            |event| {
                match event {
                    Event::OfferSent {
                        request: r,
                        session,
                    } if r == request => our_session = Some(session),
                    Event::Error {
                        request: Some(r),
                        code,
                        message,
                    } if r == request => {
                        failure = Some(format!("{code:?}: {message}"));
                        return Err(SignalError::Protocol(String::new()));
                    }
                    Event::SessionClosed {
                        session, reason, ..
                    } if Some(session) == our_session => {
                        failure = Some(format!("the session closed: {reason}"));
                        return Err(SignalError::Protocol(String::new()));
                    }
                    _ => {}
                }
                Ok(())
            },
        )
        .map_err(|e| match failure.take() {
            Some(why) => format!("the offer to {target} failed: {why}"),
            None => timeout(e, "the answer"),
        })?;
    if args.peer.signaling.json {
        output(
            &json!({
                "event": "answer",
                "session": session.to_string(),
                "from": target.to_string(),
                "offer": description,
                "answer": answer,
            })
            .to_string(),
        )?;
    } else {
        output(&format!(
            "answer from {target} (session {session}): {}",
            summary(&answer)
        ))?;
    }
    peer.connection.close();
    Ok(())
}

/// The certificate authorities a `wss://` signaling server may chain to: `--ca-file`'s, or
/// Mozilla's root program.
pub(crate) fn tls_roots(args: &crate::cli::SignalingArgs) -> Result<fog_runtime::TlsRoots, String> {
    match &args.ca_file {
        Some(path) => fog_runtime::TlsRoots::from_pem_file(path).map_err(|e| e.to_string()),
        None => Ok(fog_runtime::TlsRoots::default()),
    }
}
