//! The cluster: several fogd instances sharing presence, aliases and a message bus through
//! Redis (`--cluster redis://HOST:PORT`).
//!
//! The signaling loop never blocks on Redis. It hands the machine's [`ClusterOutput`]s to
//! [`Cluster::submit`] (a bounded queue: a full one refuses at once, counted) and takes back
//! [`Event`]s, woken through its `mio::Waker`. Three threads of this module talk to Redis with
//! the `redis` crate's blocking client, each on a connection of its own (TCP_NODELAY):
//!
//! - the **command** thread runs the machine's questions (as Lua scripts, one round trip each,
//!   atomic on the server) and publishes or withdraws the presence of the instance's peers;
//! - the **lease** thread keeps this instance's lease fresh every [`REFRESH`] and its load
//!   every [`HEARTBEAT`], so that neither waits behind the other's calls;
//! - the **subscriber** thread subscribes to the instance's own channel, for frames other
//!   instances forward to its peers.
//!
//! Frames themselves (offers, answers, candidates) take the **fast path** when Redis is a TCP
//! URL: the loop sends them and reads the channel on two non-blocking connections of its own,
//! which the command and subscriber threads open and hand over (see the `fastlink` module);
//! otherwise, or while a link is being made, the threads carry them.
//!
//! # Keys (all under `fog:`)
//!
//! | key | value | |
//! |---|---|---|
//! | `lease:<instance>` | a random token, [`LEASE`] TTL | refreshed every [`REFRESH`]; writes are fenced by it |
//! | `info:<instance>` | `<allocations> <peers> [region=<region>] <turn url>...` | same TTL; the least-loaded instance's TURN in the instance's own region is handed out (see [`choose`]) |
//! | `instances` | set of instance ids | pruned of those whose info expired |
//! | `peer:<peer id>` | `<instance> <epoch>` | set on authentication, deleted (compare-and-delete) on leave |
//! | `epoch` | counter | a registration's epoch |
//! | `alias:<alias>` | peer id | set if absent: the first claim wins, cluster-wide |
//! | channel `ch:<instance>` | `f <peer> <frame>` or `e <peer>` | a forwarded frame, or "evict your older connection of this peer" |
//!
//! A peer counts as online only while its key names an instance whose lease is alive and that
//! is subscribed to its channel, so a killed instance's peers are offline at once (its
//! subscription ends with its connection) and a stalled one's when its lease runs out, without
//! anyone deleting keys. A registration checks the lease token first: an instance that stalled
//! past its lease cannot write until it takes a new lease, and then it re-registers its peers
//! only where no other instance registered them since (compare-and-set), evicting its own
//! older connections of those that moved. One window is left: a peer that authenticated here
//! but was not yet written when the instance stalled is written as new news after the stall
//! (it may then evict a newer connection elsewhere, which reconnects). Delivery is at most
//! once.
//!
//! Without Redis the instance keeps serving its own peers: every question is answered
//! "offline" or "unavailable" at once, and its lease runs out, so others stop seeing its peers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fog_signal::PeerId;
use fog_signal::server::{ClusterOutput, QueryId, Target};
use mio::{Registry, Token, Waker};

pub(crate) use crate::fastlink::{COMMAND_TOKEN, SUBSCRIPTION_TOKEN};
use crate::fastlink::{Handoff, Handshake, InFlight, Links, Outcome};
use crate::hop_trace;

/// An instance's lease: how long its peers stay visible after it stops refreshing. A stalled
/// instance's peers are offline for the others at most this long after its last refresh, so
/// the issue's 3 s bound holds with half of it to spare.
pub(crate) const LEASE: Duration = Duration::from_millis(1_500);
/// How often the lease is refreshed: six refreshes per lease, so that the lease survives five
/// missed ones (a Redis call that times out after [`LEASE_IO_TIMEOUT`] costs two). One
/// `EVALSHA` of a three-line script per instance every 250 ms: 4 calls a second, a few tens
/// of microseconds of Redis CPU.
pub(crate) const REFRESH: Duration = Duration::from_millis(250);
/// How often the load is published and the least-loaded TURN chosen.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(1_000);
/// Read timeout of the lease thread's connection: a hung call must leave time for the next
/// refresh within the lease.
const LEASE_IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Commands waiting for the command thread; one more is refused.
pub(crate) const DEFAULT_QUEUE: usize = 16_384;
/// Connect and read timeout for Redis: a hung server must not hold the threads for long.
const IO_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Delay between attempts to reach Redis again.
const RECONNECT: Duration = Duration::from_millis(250);
/// Commands run per turn of the command thread before it looks at the lease again.
const BATCH: usize = 512;
/// Events waiting for the loop before the subscriber drops forwarded frames (counted).
const EVENT_QUEUE: usize = 65_536;
/// TURN URLs taken from one instance's info, and the longest one.
const MAX_URLS: usize = 8;
const MAX_URL_LEN: usize = 256;
/// How often the subscriber thread looks whether the loop lost its subscription.
const LINK_CHECK: Duration = Duration::from_millis(20);
/// Withdrawals kept while Redis is away.
const WITHDRAW_MAX: usize = 65_536;

/// The cluster settings from `--cluster` and the `[cluster]` table.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `redis://HOST:PORT[/DB]`.
    pub(crate) url: String,
    /// This instance's id, unique in the cluster.
    pub(crate) instance: String,
    /// `turn:` URLs this instance serves, published with its load.
    pub(crate) advertise: Vec<String>,
    /// Where this instance runs (`--cluster-region`): TURN is handed out from instances of the
    /// same region first.
    pub(crate) region: Option<String>,
    /// Bound of the command queue.
    pub(crate) queue: usize,
}

/// Why the cluster could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The URL does not parse as a Redis URL.
    Url(String, String),
    /// The instance id is unusable.
    Instance(String),
    /// A thread could not be started.
    Thread(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(url, e) => write!(f, "cluster: --cluster {url:?}: {e}"),
            Self::Instance(id) => write!(
                f,
                "cluster: instance id {id:?} must be 1 to 64 characters of letters, digits, \
                 '.', ':', '_' or '-'"
            ),
            Self::Thread(e) => write!(f, "cluster: starting a thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Whether `id` is a usable instance id (it goes into key and channel names).
pub(crate) fn valid_instance(id: &str) -> bool {
    valid_word(id)
}

/// Whether `region` can name a region (the same alphabet as an instance id).
pub(crate) fn valid_region(region: &str) -> bool {
    valid_word(region)
}

fn valid_word(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b))
}

/// What the cluster tells the signaling loop.
#[derive(Debug)]
pub(crate) enum Event {
    Resolved {
        query: QueryId,
        peer: Option<PeerId>,
        online: bool,
    },
    Claimed {
        query: QueryId,
        granted: Option<bool>,
    },
    Unreachable(PeerId),
    Forwarded {
        peer: PeerId,
        frame: String,
    },
    Evict(PeerId),
    Relay(Vec<String>),
}

enum Cmd {
    Resolve {
        query: QueryId,
        target: Target,
    },
    Forward {
        peer: PeerId,
        frame: String,
    },
    /// A forward whose outcome answers a query.
    Offer {
        query: QueryId,
        peer: PeerId,
        frame: String,
    },
    Claim {
        query: QueryId,
        peer: PeerId,
        alias: String,
    },
    /// The presence set changed: sync it.
    Presence,
}

/// The presence the loop wants published: coalesced, so that it needs no queue of its own.
#[derive(Default)]
struct Desired {
    /// Each local peer with the generation of its latest authentication.
    peers: BTreeMap<PeerId, u64>,
    changed: BTreeSet<PeerId>,
    generation: u64,
    /// Changes made so far: the command thread says up to which it has written them.
    seq: u64,
}

/// The links the loop lacks, for the threads that make them.
#[derive(Default)]
struct Wants {
    command: AtomicBool,
    subscription: AtomicBool,
}

/// How far the command thread got, for the ordering rule of [`Cluster::submit`].
#[derive(Default)]
struct Order {
    /// `Desired::seq` of the last presence change written (or given up on).
    synced_seq: AtomicU64,
    /// Frames sent (or given up on) by the command thread.
    done_forwards: AtomicU64,
}

/// Counters, shared with the threads.
#[derive(Default)]
pub(crate) struct Stats {
    /// Commands refused because the queue was full.
    pub(crate) refused_full: AtomicU64,
    /// Forwarded frames dropped because the loop's event queue was full.
    pub(crate) dropped_events: AtomicU64,
    /// Messages on the channel that did not parse.
    pub(crate) bad_messages: AtomicU64,
    /// Frames forwarded out and in.
    pub(crate) forwarded_out: AtomicU64,
    pub(crate) forwarded_in: AtomicU64,
    /// Commands answered "unavailable" because Redis was out of reach.
    pub(crate) unavailable: AtomicU64,
    /// Times the lease had to be taken anew (start, Redis restart, a stall past the lease).
    pub(crate) leases: AtomicU64,
    /// Own peers found registered elsewhere when re-registering, and evicted here.
    pub(crate) evicted: AtomicU64,
}

/// The loop's side of the cluster.
pub(crate) struct Cluster {
    cmds: SyncSender<Cmd>,
    events: Receiver<Event>,
    /// Events of the fast path, ahead of those of the threads.
    local: VecDeque<Event>,
    handoffs: Receiver<Handoff>,
    links: Links,
    /// The forward script's SHA1, for `EVALSHA` on the loop's command link.
    forward_sha: String,
    want: Arc<Wants>,
    /// The links the loop holds, as of its last look (see [`Cluster::check_links`]).
    command_up: bool,
    subscription_up: bool,
    /// The last presence change handed to the command thread, and the last it wrote.
    presence_seq: u64,
    /// Frames handed to the command thread, and how many of them it has sent: while it has
    /// some in hand, or presence to write, frames wait behind them there (so that an answer
    /// cannot reach a peer's instance before the peer's registration does, and frames to one
    /// peer keep their order).
    queued_forwards: u64,
    order: Arc<Order>,
    desired: Arc<Mutex<Desired>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) instance: String,
}

impl Cluster {
    /// Starts the threads; they reach Redis in the background (a Redis that is down at start
    /// is retried like one that goes down later).
    pub(crate) fn start(
        settings: Settings,
        waker: Arc<Waker>,
        load: Arc<AtomicUsize>,
        alternate: crate::turn::Alternate,
    ) -> Result<Cluster, StartError> {
        if !valid_instance(&settings.instance) {
            return Err(StartError::Instance(settings.instance));
        }
        let client = client(&settings.url)
            .map_err(|e| StartError::Url(settings.url.clone(), e.to_string()))?;
        let (cmds, cmd_rx) = mpsc::sync_channel(settings.queue.max(1));
        let (event_tx, events) = mpsc::sync_channel(EVENT_QUEUE);
        let (handoff_tx, handoffs) = mpsc::sync_channel(2);
        // `FOGD_CLUSTER_NO_FAST_PATH` (for the cluster bench's comparison only): the threads
        // carry every frame, as before the fast path.
        let handshake = Handshake::new(client.get_connection_info())
            .filter(|_| std::env::var_os("FOGD_CLUSTER_NO_FAST_PATH").is_none());
        let fast = handshake.is_some();
        let want = Arc::new(Wants {
            command: AtomicBool::new(fast),
            subscription: AtomicBool::new(fast),
        });
        let order = Arc::new(Order::default());
        let desired = Arc::new(Mutex::new(Desired::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let mut token = [0u8; 16];
        #[allow(clippy::disallowed_methods)]
        getrandom::fill(&mut token).map_err(|e| StartError::Thread(std::io::Error::other(e)))?;
        let keys = Keys::new(&settings.instance);
        let lease = Arc::new(LeaseState::default());
        let mut command = CommandThread {
            link: Link::new(client.clone(), IO_TIMEOUT),
            keys: keys.clone(),
            token: hex(&token),
            lease: lease.clone(),
            lease_seen: 0,
            resync: false,
            registered: BTreeMap::new(),
            aliases: BTreeMap::new(),
            withdraw: BTreeMap::new(),
            cmds: cmd_rx,
            events: event_tx.clone(),
            waker: waker.clone(),
            desired: desired.clone(),
            stop: stop.clone(),
            stats: stats.clone(),
            scripts: Scripts::new(),
            handshake: handshake.clone(),
            want: want.clone(),
            handoffs: handoff_tx.clone(),
            order: order.clone(),
        };
        let mut leaser = LeaseThread {
            link: Link::new(client.clone(), LEASE_IO_TIMEOUT),
            keys: keys.clone(),
            token: hex(&token),
            lease,
            nudge: cmds.clone(),
            advertise: settings.advertise.clone(),
            region: settings.region.clone(),
            relay: None,
            events: event_tx.clone(),
            waker: waker.clone(),
            desired: desired.clone(),
            stop: stop.clone(),
            stats: stats.clone(),
            load,
            alternate,
            script: Scripts::new().lease,
        };
        let mut subscriber = Subscriber {
            client,
            channel: keys.channel(&settings.instance),
            events: event_tx,
            waker,
            stop: stop.clone(),
            stats: stats.clone(),
            handshake,
            want: want.clone(),
            handoffs: handoff_tx,
        };
        let threads = vec![
            thread::Builder::new()
                .name("cluster".into())
                .spawn(move || command.run())
                .map_err(StartError::Thread)?,
            thread::Builder::new()
                .name("cluster-lease".into())
                .spawn(move || leaser.run())
                .map_err(StartError::Thread)?,
            thread::Builder::new()
                .name("cluster-sub".into())
                .spawn(move || subscriber.run())
                .map_err(StartError::Thread)?,
        ];
        tracing::info!(
            instance = %settings.instance,
            redis = %settings.url,
            advertise = %settings.advertise.join(" "),
            "cluster: joining"
        );
        Ok(Cluster {
            cmds,
            events,
            local: VecDeque::new(),
            handoffs,
            links: Links::default(),
            forward_sha: Scripts::new().forward.get_hash().to_owned(),
            want,
            command_up: false,
            subscription_up: false,
            presence_seq: 0,
            queued_forwards: 0,
            order,
            desired,
            stop,
            threads,
            stats,
            instance: settings.instance,
        })
    }

    /// Hands one machine output to the cluster, or gives it back when the queue is full (the
    /// caller answers it at once as "unavailable").
    ///
    /// An offer or a frame takes the loop's own command link when it is up and nothing handed
    /// to the command thread could be overtaken by it: no presence change the thread has not
    /// written yet, no frame it has not sent yet. Otherwise it queues behind them.
    pub(crate) fn submit(
        &mut self,
        out: ClusterOutput,
        now: Instant,
        registry: &Registry,
    ) -> Result<(), ClusterOutput> {
        let cmd = match out {
            ClusterOutput::Presence { peer, online } => {
                if let Ok(mut d) = self.desired.lock() {
                    if online {
                        d.generation += 1;
                        let g = d.generation;
                        d.peers.insert(peer, g);
                    } else {
                        d.peers.remove(&peer);
                    }
                    d.changed.insert(peer);
                    d.seq += 1;
                    self.presence_seq = d.seq;
                }
                // A nudge: when the queue is full the thread syncs at its next turn anyway.
                let _ = self.cmds.try_send(Cmd::Presence);
                return Ok(());
            }
            ClusterOutput::Resolve { query, target } => Cmd::Resolve { query, target },
            ClusterOutput::Forward { peer, frame } => {
                hop_trace::hop("submit", &frame);
                if self.fast_path_open() {
                    self.send_fast(now, peer, &frame, InFlight::Forward { peer }, registry);
                    return Ok(());
                }
                Cmd::Forward { peer, frame }
            }
            ClusterOutput::Offer { query, peer, frame } => {
                hop_trace::hop("submit", &frame);
                if self.fast_path_open() {
                    self.send_fast(now, peer, &frame, InFlight::Offer { query, peer }, registry);
                    return Ok(());
                }
                Cmd::Offer { query, peer, frame }
            }
            ClusterOutput::ClaimAlias { query, peer, alias } => Cmd::Claim { query, peer, alias },
        };
        let is_frame = matches!(cmd, Cmd::Forward { .. } | Cmd::Offer { .. });
        match self.cmds.try_send(cmd) {
            Ok(()) => {
                if is_frame {
                    self.queued_forwards += 1;
                }
                Ok(())
            }
            Err(TrySendError::Full(cmd) | TrySendError::Disconnected(cmd)) => {
                self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                match cmd {
                    Cmd::Resolve { query, target } => Err(ClusterOutput::Resolve { query, target }),
                    Cmd::Forward { peer, frame } => Err(ClusterOutput::Forward { peer, frame }),
                    Cmd::Offer { query, peer, frame } => {
                        Err(ClusterOutput::Offer { query, peer, frame })
                    }
                    Cmd::Claim { query, peer, alias } => {
                        Err(ClusterOutput::ClaimAlias { query, peer, alias })
                    }
                    Cmd::Presence => Ok(()),
                }
            }
        }
    }

    /// Whether a frame may take the loop's command link now (see [`submit`](Self::submit)).
    fn fast_path_open(&self) -> bool {
        self.links.has_command()
            && self.order.synced_seq.load(Ordering::Acquire) == self.presence_seq
            && self.order.done_forwards.load(Ordering::Acquire) == self.queued_forwards
    }

    fn send_fast(
        &mut self,
        now: Instant,
        peer: PeerId,
        frame: &str,
        what: InFlight,
        registry: &Registry,
    ) {
        let command = crate::resp::command(&[
            b"EVALSHA",
            self.forward_sha.as_bytes(),
            b"1",
            peer_key(&peer).as_bytes(),
            format!("f {peer} {frame}").as_bytes(),
            LEASE_PREFIX.as_bytes(),
            CHANNEL_PREFIX.as_bytes(),
        ]);
        let mut out = Vec::new();
        self.links.send(now, &command, what, &mut out, registry);
        self.outcomes(out);
    }

    /// Turns what the links produced into events for the loop, and asks for the links lost.
    fn outcomes(&mut self, out: Vec<Outcome>) {
        for outcome in out {
            let event = match outcome {
                Outcome::Replied(InFlight::Offer { query, peer }, receivers) => {
                    if receivers > 0 {
                        self.stats.forwarded_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Event::Resolved {
                        query,
                        peer: Some(peer),
                        online: receivers > 0,
                    })
                }
                Outcome::Replied(InFlight::Forward { peer }, receivers) => {
                    if receivers > 0 {
                        self.stats.forwarded_out.fetch_add(1, Ordering::Relaxed);
                        None
                    } else {
                        Some(Event::Unreachable(peer))
                    }
                }
                Outcome::Lost(InFlight::Offer { query, peer }) => {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    Some(Event::Resolved {
                        query,
                        peer: Some(peer),
                        online: false,
                    })
                }
                Outcome::Lost(InFlight::Forward { peer }) => {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    Some(Event::Unreachable(peer))
                }
                Outcome::Message(payload) => incoming(&payload, &self.stats),
            };
            self.local.extend(event);
        }
        self.check_links();
    }

    /// Asks the threads for a new link when one went down (only then: a link asked for and
    /// not yet adopted must not be asked for twice, or two subscriptions would deliver every
    /// frame twice for a moment).
    fn check_links(&mut self) {
        if self.command_up && !self.links.command_up() {
            self.command_up = false;
            self.want.command.store(true, Ordering::SeqCst);
            // Wakes the command thread to make a new one.
            let _ = self.cmds.try_send(Cmd::Presence);
        }
        if self.subscription_up && !self.links.subscription_up() {
            self.subscription_up = false;
            self.want.subscription.store(true, Ordering::SeqCst);
        }
    }

    /// Readiness on one of the loop's Redis links.
    pub(crate) fn ready(&mut self, token: Token, registry: &Registry) {
        let mut out = Vec::new();
        self.links.ready(token, &mut out, registry);
        self.outcomes(out);
    }

    /// When the loop's command link must have answered.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.links.poll_timeout()
    }

    /// Drops the loop's command link if it did not answer in time.
    pub(crate) fn handle_timeout(&mut self, now: Instant, registry: &Registry) {
        let mut out = Vec::new();
        self.links.handle_timeout(now, &mut out, registry);
        self.outcomes(out);
    }

    /// The next event for the loop, if any; takes the links the threads made.
    pub(crate) fn poll_event(&mut self, registry: &Registry) -> Option<Event> {
        while let Ok(handoff) = self.handoffs.try_recv() {
            let mut out = Vec::new();
            let command = matches!(handoff, Handoff::Command(_));
            if self.links.adopt(registry, handoff, &mut out) {
                if command {
                    self.command_up = true;
                } else {
                    self.subscription_up = true;
                }
            } else if command {
                self.want.command.store(true, Ordering::SeqCst);
            } else {
                self.want.subscription.store(true, Ordering::SeqCst);
            }
            self.outcomes(out);
        }
        self.local
            .pop_front()
            .or_else(|| self.events.try_recv().ok())
    }

    /// Stops the threads and waits for them (each notices within [`IO_TIMEOUT`]).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the command thread if it waits for commands.
        let _ = self.cmds.try_send(Cmd::Presence);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// The counters, for the final log line.
    pub(crate) fn log(&self) {
        let s = &self.stats;
        tracing::info!(
            instance = %self.instance,
            forwarded_out = s.forwarded_out.load(Ordering::Relaxed),
            forwarded_in = s.forwarded_in.load(Ordering::Relaxed),
            refused_full = s.refused_full.load(Ordering::Relaxed),
            dropped_events = s.dropped_events.load(Ordering::Relaxed),
            bad_messages = s.bad_messages.load(Ordering::Relaxed),
            unavailable = s.unavailable.load(Ordering::Relaxed),
            leases = s.leases.load(Ordering::Relaxed),
            evicted = s.evicted.load(Ordering::Relaxed),
            "cluster stopped"
        );
    }
}

/// Key and channel names.
#[derive(Clone)]
struct Keys {
    lease: String,
    info: String,
}

const PREFIX: &str = "fog:";
const PEER_PREFIX: &str = "fog:peer:";
const LEASE_PREFIX: &str = "fog:lease:";
const CHANNEL_PREFIX: &str = "fog:ch:";
const INFO_PREFIX: &str = "fog:info:";
const INSTANCES: &str = "fog:instances";
const EPOCH: &str = "fog:epoch";

impl Keys {
    fn new(instance: &str) -> Keys {
        Keys {
            lease: format!("{LEASE_PREFIX}{instance}"),
            info: format!("{INFO_PREFIX}{instance}"),
        }
    }

    fn instance(&self) -> &str {
        self.lease.strip_prefix(LEASE_PREFIX).unwrap_or_default()
    }

    fn channel(&self, instance: &str) -> String {
        format!("{CHANNEL_PREFIX}{instance}")
    }
}

fn peer_key(peer: &PeerId) -> String {
    format!("{PEER_PREFIX}{peer}")
}

fn alias_key(alias: &str) -> String {
    format!("{PREFIX}alias:{alias}")
}

/// One instance's published info (`info:<instance>`).
#[derive(Debug, PartialEq, Eq)]
struct Info<'a> {
    /// TURN allocations, then signaling peers.
    load: (usize, usize),
    region: Option<&'a str>,
    urls: Vec<String>,
}

/// One instance's published info, read as untrusted: `None` when malformed or without a TURN
/// URL.
fn parse_info(info: &str) -> Option<Info<'_>> {
    let mut words = info.split_ascii_whitespace().peekable();
    let allocations = words.next()?.parse::<usize>().ok()?;
    let peers = words.next()?.parse::<usize>().ok()?;
    let region = words
        .next_if(|w| w.starts_with("region="))
        .and_then(|w| w.strip_prefix("region="))
        .filter(|r| valid_region(r));
    // Handed to clients as they are: a few, of a sane length, or none.
    let urls: Vec<String> = words
        .filter(|u| u.len() <= MAX_URL_LEN && !u.starts_with("region="))
        .take(MAX_URLS)
        .map(str::to_owned)
        .collect();
    (!urls.is_empty()).then_some(Info {
        load: (allocations, peers),
        region,
        urls,
    })
}

/// From every instance's published info: the TURN URLs to hand out, and the other instance a
/// full TURN server here sends Allocates to (its URLs).
///
/// "Near the peer" is read as "in this instance's region" (`--cluster-region`): a peer is
/// signaled by an instance near it (DNS or a load balancer sends it there), so a relay in the
/// same region keeps the relayed path short. Among the instances of the region, the least
/// loaded wins (fewest TURN allocations, then fewest signaling peers; ties go to the lower id,
/// the same choice on every instance of the region); only when none of the region publishes a
/// relay does an instance elsewhere serve, chosen the same way. Without a region every instance
/// counts as near.
fn choose(
    own: &str,
    region: Option<&str>,
    published: &[(&str, String)],
) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let parsed: Vec<_> = published
        .iter()
        .filter_map(|(member, info)| {
            let info = parse_info(info)?;
            let near = region.is_none() || info.region == region;
            Some((info.load, *member, near, info.urls))
        })
        .collect();
    // Near first, then load, then id.
    type Entry<'a> = ((usize, usize), &'a str, bool, Vec<String>);
    let rank = |a: &&Entry, b: &&Entry| (!a.2, a.0, a.1).cmp(&(!b.2, b.0, b.1));
    let best = parsed.iter().min_by(rank).map(|c| c.3.clone());
    let alternate = parsed
        .iter()
        .filter(|c| c.1 != own)
        .min_by(rank)
        .map(|c| c.3.clone());
    (best, alternate)
}

/// KEYS[1] peer key; ARGV message, lease prefix, channel prefix. Receivers (0: none). Also sent
/// by the loop itself on its command link (`fastlink`).
const FORWARD_LUA: &str = r"local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local inst = string.match(v, '^(%S+)')
if not inst or redis.call('EXISTS', ARGV[2] .. inst) == 0 then return 0 end
return redis.call('PUBLISH', ARGV[3] .. inst, ARGV[1])";

/// The Lua scripts: each runs atomically on the Redis server (EVALSHA, loaded on first use).
/// Standalone Redis only: they name keys computed inside the script.
struct Scripts {
    lease: redis::Script,
    register: redis::Script,
    unregister: redis::Script,
    claim: redis::Script,
    resolve: redis::Script,
    forward: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            // KEYS[1] lease; ARGV token, ttl ms. 1 kept, 2 taken anew, 0 held by another.
            lease: redis::Script::new(
                r"local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0",
            ),
            // KEYS[1] peer key, KEYS[2] lease, KEYS[3] epoch counter; ARGV token, instance,
            // mode ('fresh' overwrites, 'refresh' only where absent or ours), peer, channel
            // prefix. Returns {epoch or 0 (elsewhere) or -1 (no lease), previous value}; a
            // fresh registration tells the previous instance to evict its older connection.
            register: redis::Script::new(
                r"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {-1, ''} end
local cur = redis.call('GET', KEYS[1])
local ci = cur and string.match(cur, '^(%S+)')
if ARGV[3] == 'refresh' and ci and ci ~= ARGV[2] then return {0, cur} end
local epoch = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. epoch)
if ci and ci ~= ARGV[2] then redis.call('PUBLISH', ARGV[5] .. ci, 'e ' .. ARGV[4]) end
return {epoch, cur or ''}",
            ),
            // KEYS[1] peer key; ARGV value. Deletes only the registration it made.
            unregister: redis::Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
            ),
            // KEYS[1] alias key; ARGV peer. 1 when the alias is (now) the peer's.
            claim: redis::Script::new(
                r"if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0",
            ),
            // KEYS[1] alias key or ''; ARGV peer or '', peer prefix, lease prefix, channel
            // prefix. {peer, 1 if online}: its instance holds a lease and listens.
            resolve: redis::Script::new(
                r"local peer = ARGV[1]
if peer == '' then
  peer = redis.call('GET', KEYS[1])
  if not peer then return {'', 0} end
end
local v = redis.call('GET', ARGV[2] .. peer)
if not v then return {peer, 0} end
local inst = string.match(v, '^(%S+)')
if not inst or redis.call('EXISTS', ARGV[3] .. inst) == 0 then return {peer, 0} end
local subs = redis.call('PUBSUB', 'NUMSUB', ARGV[4] .. inst)
if subs[2] == 0 then return {peer, 0} end
return {peer, 1}",
            ),
            forward: redis::Script::new(FORWARD_LUA),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The wall clock of the cluster's threads (a driver: they time their refreshes).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// A Redis client whose connections send each command at once: TCP_NODELAY, so that a
/// command written while the previous reply's ACK is still delayed does not wait for it
/// (Nagle's algorithm, RFC 896, against the peer's delayed ACK, RFC 1122 4.2.3.2).
fn client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo as _;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}

/// The lease as the lease thread last saw it, for the command thread.
#[derive(Default)]
struct LeaseState {
    /// The lease is ours (as of the last refresh).
    held: AtomicBool,
    /// Times the lease was taken anew: the command thread registers its peers and aliases
    /// again whenever this changes.
    taken: AtomicU64,
}

/// One thread's connection to Redis, reopened [`RECONNECT`] after a loss.
struct Link {
    client: redis::Client,
    con: Option<redis::Connection>,
    retry_at: Option<Instant>,
    timeout: Duration,
}

impl Link {
    fn new(client: redis::Client, timeout: Duration) -> Link {
        Link {
            client,
            con: None,
            retry_at: None,
            timeout,
        }
    }

    /// Connects when not connected and not waiting to retry; true when a new connection was
    /// made.
    fn connect(&mut self, who: &str) -> bool {
        if self.con.is_some() || self.retry_at.is_some_and(|at| now() < at) {
            return false;
        }
        tracing::debug!(who, "cluster: connecting to Redis");
        match self.client.get_connection_with_timeout(self.timeout) {
            Ok(con) => {
                let _ = con.set_read_timeout(Some(self.timeout));
                let _ = con.set_write_timeout(Some(self.timeout));
                tracing::info!(who, "cluster: connected to Redis");
                self.con = Some(con);
                self.retry_at = None;
                true
            }
            Err(e) => {
                if self.retry_at.is_none() {
                    tracing::warn!(who, error = %e, "cluster: Redis out of reach; serving own peers only");
                } else {
                    tracing::debug!(who, error = %e, "cluster: Redis still out of reach");
                }
                self.retry_at = Some(now() + RECONNECT);
                false
            }
        }
    }

    /// Drops the connection after a failed call; the next attempt is [`RECONNECT`] after the
    /// loss (not after each command refused meanwhile, or a steady stream of them would put
    /// it off for ever).
    fn lost(&mut self, who: &str) {
        if self.con.take().is_some() {
            tracing::warn!(
                who,
                "cluster: lost Redis; serving own peers only until it is back"
            );
            self.retry_at = Some(now() + RECONNECT);
        }
    }

    fn con(&mut self) -> Result<&mut redis::Connection, Down> {
        self.con.as_mut().ok_or(Down)
    }
}

/// Keeps the lease and publishes the load, on a thread and a connection of its own: a lease
/// refresh never waits behind the machine's commands (a burst of registrations, a slow
/// script), and no command waits behind the refresh.
struct LeaseThread {
    link: Link,
    keys: Keys,
    token: String,
    lease: Arc<LeaseState>,
    /// Wakes the command thread when the lease is taken anew.
    nudge: SyncSender<Cmd>,
    advertise: Vec<String>,
    region: Option<String>,
    /// The TURN URLs last handed to the loop.
    relay: Option<Vec<String>>,
    events: SyncSender<Event>,
    waker: Arc<Waker>,
    desired: Arc<Mutex<Desired>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    load: Arc<AtomicUsize>,
    /// The least-loaded other instance's TURN address, for our server's 300s.
    alternate: crate::turn::Alternate,
    script: redis::Script,
}

impl LeaseThread {
    fn run(&mut self) {
        let mut next_info = now();
        while !self.stop.load(Ordering::SeqCst) {
            let started = now();
            self.link.connect("lease");
            if self.refresh().is_err() {
                self.lease.held.store(false, Ordering::SeqCst);
                self.link.lost("lease");
            } else if now() >= next_info && self.lease.held.load(Ordering::SeqCst) {
                next_info = now() + HEARTBEAT;
                if self.publish().is_err() {
                    self.link.lost("lease");
                }
            }
            thread::sleep((started + REFRESH).saturating_duration_since(now()));
        }
        // Leaving: withdraw the lease so that others see this instance's peers offline now.
        if let Some(con) = &mut self.link.con {
            let _ = redis::cmd("DEL").arg(&self.keys.lease).exec(con);
            let _ = redis::cmd("DEL").arg(&self.keys.info).exec(con);
        }
    }

    /// Refreshes (or takes) the lease.
    fn refresh(&mut self) -> Result<(), Down> {
        let ttl = LEASE.as_millis() as u64;
        let con = self.link.con()?;
        let got: i64 = self
            .script
            .key(&self.keys.lease)
            .arg(&self.token)
            .arg(ttl)
            .invoke(con)
            .map_err(|_| Down)?;
        match got {
            1 => self.lease.held.store(true, Ordering::SeqCst),
            2 => {
                self.lease.held.store(true, Ordering::SeqCst);
                self.lease.taken.fetch_add(1, Ordering::SeqCst);
                self.stats.leases.fetch_add(1, Ordering::Relaxed);
                tracing::info!("cluster: lease taken; registering own peers and aliases");
                // The command thread registers everything again at its next turn.
                let _ = self.nudge.try_send(Cmd::Presence);
            }
            _ => {
                if self.lease.held.swap(false, Ordering::SeqCst) {
                    tracing::error!(
                        key = %self.keys.lease,
                        "cluster: another process holds this instance's lease; is the instance id unique?"
                    );
                }
            }
        }
        Ok(())
    }

    /// Publishes the load and picks the least-loaded TURN.
    fn publish(&mut self) -> Result<(), Down> {
        let ttl = LEASE.as_millis() as u64;
        let allocations = self.load.load(Ordering::Relaxed);
        let peers = self.desired.lock().map(|d| d.peers.len()).unwrap_or(0);
        let mut info = format!("{allocations} {peers}");
        if let Some(region) = &self.region {
            info.push_str(" region=");
            info.push_str(region);
        }
        for url in &self.advertise {
            info.push(' ');
            info.push_str(url);
        }
        let instance = self.keys.instance().to_owned();
        let con = self.link.con()?;
        redis::pipe()
            .cmd("SET")
            .arg(&self.keys.info)
            .arg(&info)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(INSTANCES)
            .arg(&instance)
            .ignore()
            .exec(con)
            .map_err(|_| Down)?;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(INSTANCES)
            .query(con)
            .map_err(|_| Down)?;
        if members.is_empty() {
            return Ok(());
        }
        let infos: Vec<Option<String>> = redis::cmd("MGET")
            .arg(
                members
                    .iter()
                    .map(|m| format!("{INFO_PREFIX}{m}"))
                    .collect::<Vec<_>>(),
            )
            .query(con)
            .map_err(|_| Down)?;
        let mut published = Vec::with_capacity(members.len());
        for (member, info) in members.iter().zip(infos) {
            match info {
                Some(info) => published.push((member.as_str(), info)),
                None => {
                    // Gone: its info expired with its lease.
                    let _ = redis::cmd("SREM").arg(INSTANCES).arg(member).exec(con);
                }
            }
        }
        let (best, alternate) = choose(&instance, self.region.as_deref(), &published);
        let alternate = alternate.and_then(|urls| urls.iter().find_map(|u| turn_udp_address(u)));
        if let Ok(mut slot) = self.alternate.lock() {
            *slot = alternate;
        }
        if let Some(urls) = best {
            if self.relay.as_ref() != Some(&urls) {
                self.relay = Some(urls.clone());
                let _ = self.events.send(Event::Relay(urls));
                let _ = self.waker.wake();
            }
        }
        Ok(())
    }
}

struct CommandThread {
    link: Link,
    keys: Keys,
    token: String,
    lease: Arc<LeaseState>,
    /// `lease.taken` when this thread last registered everything again.
    lease_seen: u64,
    /// Register everything again at the next turn (a new connection: writes may have failed
    /// while the old one was dying).
    resync: bool,
    /// Local peers registered in Redis: generation and the value written.
    registered: BTreeMap<PeerId, (u64, String)>,
    /// Aliases this instance claimed, to claim again after Redis lost them.
    aliases: BTreeMap<String, PeerId>,
    /// Registrations of peers that left while Redis was out of reach, to withdraw when it is
    /// back (compare-and-delete: harmless if the peer registered elsewhere since).
    withdraw: BTreeMap<PeerId, String>,
    cmds: Receiver<Cmd>,
    events: SyncSender<Event>,
    waker: Arc<Waker>,
    desired: Arc<Mutex<Desired>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    scripts: Scripts,
    /// Set for the fast path: this thread makes the loop's command link.
    handshake: Option<Handshake>,
    want: Arc<Wants>,
    handoffs: SyncSender<Handoff>,
    order: Arc<Order>,
}

/// A Redis call failed: the connection is dropped and reopened later.
struct Down;

impl CommandThread {
    fn run(&mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        while !self.stop.load(Ordering::SeqCst) {
            // The lease thread nudges on a new lease; the timeout covers a lost nudge.
            match self.cmds.recv_timeout(REFRESH) {
                Ok(cmd) => batch.push(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < BATCH {
                match self.cmds.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            if hop_trace::enabled() {
                for cmd in &batch {
                    if let Cmd::Forward { frame, .. } | Cmd::Offer { frame, .. } = cmd {
                        hop_trace::hop("cmd.recv", frame);
                    }
                }
            }
            if self.link.connect("commands") {
                self.resync = true;
            }
            let taken = self.lease.taken.load(Ordering::SeqCst);
            if self.link.con.is_some() && self.held() && (taken != self.lease_seen || self.resync) {
                self.lease_seen = taken;
                self.resync = false;
                if self.reregister().is_err() {
                    self.lost();
                }
            }
            if self.sync_presence().is_err() {
                self.lost();
            }
            for cmd in batch.drain(..) {
                let frame = matches!(cmd, Cmd::Forward { .. } | Cmd::Offer { .. });
                self.execute(cmd);
                if frame {
                    self.order.done_forwards.fetch_add(1, Ordering::Release);
                }
            }
            self.make_link();
            let _ = self.waker.wake();
        }
    }

    fn held(&self) -> bool {
        self.lease.held.load(Ordering::SeqCst)
    }

    /// Makes the loop a command link when it lacks one and Redis answers this thread.
    fn make_link(&mut self) {
        let Some(handshake) = &self.handshake else {
            return;
        };
        if self.link.con.is_none() || !self.want.command.load(Ordering::SeqCst) {
            return;
        }
        let load = crate::resp::command(&[b"SCRIPT", b"LOAD", FORWARD_LUA.as_bytes()]);
        match handshake.open(IO_TIMEOUT, &[load]) {
            Ok((stream, _)) => {
                self.want.command.store(false, Ordering::SeqCst);
                // Never blocks: a loop that stopped reading handoffs is stopping.
                if self.handoffs.try_send(Handoff::Command(stream)).is_err() {
                    self.want.command.store(true, Ordering::SeqCst);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cluster: making the loop's command link"),
        }
    }

    fn lost(&mut self) {
        self.link.lost("commands");
    }

    fn instance(&self) -> String {
        self.keys.instance().to_owned()
    }

    /// After taking the lease anew (first start, Redis restart, a stall past the lease):
    /// registers every own peer where nobody registered it since, and claims own aliases.
    fn reregister(&mut self) -> Result<(), Down> {
        let peers: Vec<(PeerId, u64)> =
            self.registered.iter().map(|(p, (g, _))| (*p, *g)).collect();
        for (peer, generation) in peers {
            // A peer never written (it came while Redis or the lease was away) is the newest
            // news about itself; one written before yields to a registration made since.
            let never_written = self
                .registered
                .get(&peer)
                .is_some_and(|(_, v)| v.is_empty());
            let mode = if never_written { "fresh" } else { "refresh" };
            match self.register(peer, mode)? {
                Registration::Done(value) => {
                    self.registered.insert(peer, (generation, value));
                }
                Registration::Elsewhere => {
                    self.registered.remove(&peer);
                    self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    let _ = self.events.send(Event::Evict(peer));
                }
                // Lost since: the lease thread takes it again, and then this runs again.
                Registration::NoLease => return Ok(()),
            }
        }
        let aliases: Vec<(String, PeerId)> =
            self.aliases.iter().map(|(a, p)| (a.clone(), *p)).collect();
        for (alias, peer) in aliases {
            if !self.claim(&alias, peer)? {
                tracing::warn!(%alias, %peer, "cluster: an own alias was claimed by another peer while Redis had lost it");
                self.aliases.remove(&alias);
            }
        }
        Ok(())
    }

    fn register(&mut self, peer: PeerId, mode: &str) -> Result<Registration, Down> {
        let instance = self.instance();
        let lease = self.keys.lease.clone();
        let token = self.token.clone();
        let script = &self.scripts.register;
        let con = self.link.con()?;
        let (epoch, previous): (i64, String) = script
            .key(peer_key(&peer))
            .key(&lease)
            .key(EPOCH)
            .arg(&token)
            .arg(&instance)
            .arg(mode)
            .arg(peer.to_string())
            .arg(CHANNEL_PREFIX)
            .invoke(con)
            .map_err(|_| Down)?;
        Ok(match epoch {
            -1 => Registration::NoLease,
            0 => {
                let _ = previous;
                Registration::Elsewhere
            }
            e => Registration::Done(format!("{instance} {e}")),
        })
    }

    fn claim(&mut self, alias: &str, peer: PeerId) -> Result<bool, Down> {
        let script = &self.scripts.claim;
        let con = self.link.con()?;
        let got: i64 = script
            .key(alias_key(alias))
            .arg(peer.to_string())
            .invoke(con)
            .map_err(|_| Down)?;
        Ok(got == 1)
    }

    /// Publishes and withdraws presence until it matches what the loop wants.
    fn sync_presence(&mut self) -> Result<(), Down> {
        let (changes, seq): (Vec<(PeerId, Option<u64>)>, u64) = {
            let Ok(mut d) = self.desired.lock() else {
                return Ok(());
            };
            let changed = std::mem::take(&mut d.changed);
            let changes = changed
                .into_iter()
                .map(|p| (p, d.peers.get(&p).copied()))
                .collect();
            (changes, d.seq)
        };
        let result = self.write_presence(changes);
        // Written, or kept for a new lease: either way frames need not wait for it.
        self.order.synced_seq.store(seq, Ordering::Release);
        result
    }

    fn write_presence(&mut self, changes: Vec<(PeerId, Option<u64>)>) -> Result<(), Down> {
        let mut result = Ok(());
        if self.link.con.is_some() {
            while let Some((peer, value)) = self.withdraw.pop_first() {
                if self.unregister(peer, &value).is_err() {
                    self.withdraw.insert(peer, value);
                    result = Err(Down);
                    break;
                }
            }
        }
        for (peer, want) in changes {
            if result.is_err() || self.link.con.is_none() || !self.held() {
                // Not now: kept for when Redis and the lease are back (a new lease
                // re-registers everything in `registered`, so record the wish there).
                match want {
                    Some(g) => {
                        self.registered.insert(peer, (g, String::new()));
                    }
                    None => {
                        if let Some((_, value)) = self.registered.remove(&peer) {
                            // Bounded like the peers: past that, the lease bounds their life.
                            if !value.is_empty() && self.withdraw.len() < WITHDRAW_MAX {
                                self.withdraw.insert(peer, value);
                            }
                        }
                    }
                }
                continue;
            }
            match want {
                Some(g) => {
                    if self
                        .registered
                        .get(&peer)
                        .is_some_and(|(h, v)| *h == g && !v.is_empty())
                    {
                        continue;
                    }
                    match self.register(peer, "fresh") {
                        Ok(Registration::Done(value)) => {
                            self.registered.insert(peer, (g, value));
                        }
                        Ok(Registration::Elsewhere) => {}
                        Ok(Registration::NoLease) => {
                            self.registered.insert(peer, (g, String::new()));
                        }
                        Err(Down) => {
                            self.registered.insert(peer, (g, String::new()));
                            result = Err(Down);
                        }
                    }
                }
                None => {
                    let Some((_, value)) = self.registered.remove(&peer) else {
                        continue;
                    };
                    if value.is_empty() {
                        continue;
                    }
                    if self.unregister(peer, &value).is_err() {
                        self.withdraw.insert(peer, value);
                        result = Err(Down);
                    }
                }
            }
        }
        result
    }

    fn unregister(&mut self, peer: PeerId, value: &str) -> Result<(), Down> {
        let script = &self.scripts.unregister;
        let con = self.link.con()?;
        let _: i64 = script
            .key(peer_key(&peer))
            .arg(value)
            .invoke(con)
            .map_err(|_| Down)?;
        Ok(())
    }

    fn execute(&mut self, cmd: Cmd) {
        let usable = self.link.con.is_some();
        match cmd {
            Cmd::Presence => {}
            Cmd::Resolve { query, target } => {
                let answer = if usable {
                    self.resolve(&target)
                } else {
                    Err(Down)
                };
                let (peer, online) = match answer {
                    Ok(found) => found,
                    Err(Down) => {
                        self.down_answer();
                        (None, false)
                    }
                };
                let _ = self.events.send(Event::Resolved {
                    query,
                    peer,
                    online,
                });
            }
            Cmd::Forward { peer, frame } => {
                let delivered = usable
                    && self.forward(peer, &frame).unwrap_or_else(|Down| {
                        self.down_answer();
                        false
                    });
                if delivered {
                    self.stats.forwarded_out.fetch_add(1, Ordering::Relaxed);
                } else {
                    let _ = self.events.send(Event::Unreachable(peer));
                }
            }
            Cmd::Offer { query, peer, frame } => {
                let delivered = usable
                    && self.forward(peer, &frame).unwrap_or_else(|Down| {
                        self.down_answer();
                        false
                    });
                if delivered {
                    self.stats.forwarded_out.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self.events.send(Event::Resolved {
                    query,
                    peer: Some(peer),
                    online: delivered,
                });
            }
            Cmd::Claim { query, peer, alias } => {
                let granted = if usable {
                    match self.claim(&alias, peer) {
                        Ok(g) => Some(g),
                        Err(Down) => {
                            self.down_answer();
                            None
                        }
                    }
                } else {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    None
                };
                if granted == Some(true) {
                    self.aliases.insert(alias, peer);
                }
                let _ = self.events.send(Event::Claimed { query, granted });
            }
        }
    }

    /// A call failed: counted, and the connection is dropped for a reconnect.
    fn down_answer(&mut self) {
        self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        self.lost();
    }

    fn resolve(&mut self, target: &Target) -> Result<(Option<PeerId>, bool), Down> {
        let (alias, peer) = match target {
            Target::Peer(p) => (String::new(), p.to_string()),
            Target::Alias(a) => (alias_key(a), String::new()),
        };
        let script = &self.scripts.resolve;
        let con = self.link.con()?;
        let (found, online): (String, i64) = script
            .key(alias)
            .arg(peer)
            .arg(PEER_PREFIX)
            .arg(LEASE_PREFIX)
            .arg(CHANNEL_PREFIX)
            .invoke(con)
            .map_err(|_| Down)?;
        // A value that is not a peer id came from someone else's writes: not a peer.
        let found = found.parse::<PeerId>().ok();
        Ok((found, online == 1 && found.is_some()))
    }

    fn forward(&mut self, peer: PeerId, frame: &str) -> Result<bool, Down> {
        hop_trace::hop("cmd.eval", frame);
        let script = &self.scripts.forward;
        let con = self.link.con()?;
        let receivers: i64 = script
            .key(peer_key(&peer))
            .arg(format!("f {peer} {frame}"))
            .arg(LEASE_PREFIX)
            .arg(CHANNEL_PREFIX)
            .invoke(con)
            .map_err(|_| Down)?;
        hop_trace::hop("cmd.done", frame);
        Ok(receivers > 0)
    }
}

enum Registration {
    Done(String),
    Elsewhere,
    NoLease,
}

/// Listens on the instance's channel.
struct Subscriber {
    client: redis::Client,
    channel: String,
    events: SyncSender<Event>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    /// Set for the fast path: the loop reads the subscription, this thread only makes it.
    handshake: Option<Handshake>,
    want: Arc<Wants>,
    handoffs: SyncSender<Handoff>,
}

impl Subscriber {
    fn run(&mut self) {
        if let Some(handshake) = self.handshake.clone() {
            self.make_links(&handshake);
        } else {
            self.listen();
        }
    }

    /// Subscribes a connection and hands it to the loop, whenever the loop lacks one.
    fn make_links(&mut self, handshake: &Handshake) {
        let subscribe = crate::resp::command(&[b"SUBSCRIBE", self.channel.as_bytes()]);
        let mut warned = false;
        while !self.stop.load(Ordering::SeqCst) {
            if !self.want.subscription.load(Ordering::SeqCst) {
                thread::sleep(LINK_CHECK);
                continue;
            }
            match handshake.open(IO_TIMEOUT, std::slice::from_ref(&subscribe)) {
                Ok((stream, input)) => {
                    warned = false;
                    self.want.subscription.store(false, Ordering::SeqCst);
                    // Never blocks: a loop that stopped reading handoffs is stopping.
                    if self
                        .handoffs
                        .try_send(Handoff::Subscription(stream, input))
                        .is_err()
                    {
                        self.want.subscription.store(true, Ordering::SeqCst);
                        thread::sleep(RECONNECT);
                        continue;
                    }
                    let _ = self.waker.wake();
                    tracing::info!(channel = %self.channel, "cluster: subscribed");
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "cluster: subscriber cannot reach Redis");
                        warned = true;
                    }
                    thread::sleep(RECONNECT);
                }
            }
        }
    }

    /// Without the fast path: listens on this thread and hands each frame to the loop.
    fn listen(&mut self) {
        let mut warned = false;
        while !self.stop.load(Ordering::SeqCst) {
            let mut con = match self.client.get_connection_with_timeout(IO_TIMEOUT) {
                Ok(con) => con,
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "cluster: subscriber cannot reach Redis");
                        warned = true;
                    }
                    thread::sleep(RECONNECT);
                    continue;
                }
            };
            warned = false;
            let mut pubsub = con.as_pubsub();
            if pubsub.subscribe(&self.channel).is_err() {
                thread::sleep(RECONNECT);
                continue;
            }
            // Short reads, so that a stop is noticed soon.
            let _ = pubsub.set_read_timeout(Some(Duration::from_millis(200)));
            tracing::info!(channel = %self.channel, "cluster: subscribed");
            loop {
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                match pubsub.get_message() {
                    Ok(msg) => {
                        let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                        self.deliver(&payload);
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: subscription lost; resubscribing");
                        break;
                    }
                }
            }
            thread::sleep(RECONNECT);
        }
    }

    /// One message from the channel: network input, parsed without trust.
    fn deliver(&self, payload: &[u8]) {
        let Some(event) = incoming(payload, &self.stats) else {
            return;
        };
        match self.events.try_send(event) {
            Ok(()) => {
                let _ = self.waker.wake();
            }
            Err(_) => {
                self.stats.dropped_events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One message from the instance's channel, counted: network input, parsed without trust.
fn incoming(payload: &[u8], stats: &Stats) -> Option<Event> {
    let event = std::str::from_utf8(payload).ok().and_then(parse_message);
    let Some(event) = event else {
        stats.bad_messages.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    if let Event::Forwarded { frame, .. } = &event {
        hop_trace::hop("sub.recv", frame);
        stats.forwarded_in.fetch_add(1, Ordering::Relaxed);
    }
    Some(event)
}

/// `f <peer> <frame>` or `e <peer>`.
fn parse_message(text: &str) -> Option<Event> {
    let (kind, rest) = text.split_once(' ')?;
    match kind {
        "f" => {
            let (peer, frame) = rest.split_once(' ')?;
            Some(Event::Forwarded {
                peer: peer.parse().ok()?,
                frame: frame.to_owned(),
            })
        }
        "e" => Some(Event::Evict(rest.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_parse_without_trust() {
        let peer = fog_signal::KeyPair::from_seed(&[7; 32]).peer_id();
        match parse_message(&format!("f {peer} {{\"type\":\"x\"}}")) {
            Some(Event::Forwarded { peer: p, frame }) => {
                assert_eq!(p, peer);
                assert_eq!(frame, "{\"type\":\"x\"}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_message(&format!("e {peer}")), Some(Event::Evict(p)) if p == peer));
        for bad in [
            "",
            "f",
            "f nobody {}",
            "e",
            "x y z",
            "e not-a-peer",
            "f  {}",
        ] {
            assert!(parse_message(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn bad_cluster_settings_are_refused_before_anything_binds() {
        use clap::Parser as _;
        let cases: [(&[&str], &str); 3] = [
            (
                &[
                    "--stun",
                    "127.0.0.1:3478",
                    "--cluster",
                    "redis://127.0.0.1:1",
                ],
                "give --signal too",
            ),
            (
                &["--signal", "127.0.0.1:0", "--cluster", "http://x"],
                "--cluster",
            ),
            (
                &[
                    "--signal",
                    "127.0.0.1:0",
                    "--cluster",
                    "redis://127.0.0.1:1",
                    "--cluster-instance",
                    "a b",
                ],
                "instance id",
            ),
        ];
        for (args, want) in cases {
            let cli =
                crate::Cli::try_parse_from(std::iter::once("fogd").chain(args.iter().copied()))
                    .unwrap();
            let error = match crate::Services::start(&cli) {
                Ok(_) => panic!("{args:?} started"),
                Err(e) => e.to_string(),
            };
            assert!(error.contains(want), "{args:?}: {error}");
        }
    }

    #[test]
    fn instance_ids_fit_key_names() {
        assert!(valid_instance("fogd-1"));
        assert!(valid_instance("127.0.0.2:7600"));
        assert!(!valid_instance(""));
        assert!(!valid_instance("a b"));
        assert!(!valid_instance(&"x".repeat(65)));
    }
}

/// The UDP address of a `turn:` URL that names an IP literal (RFC 7065: `turn:host[:port]`,
/// UDP unless `?transport=tcp`): what a 300's ALTERNATE-SERVER can carry. Host names and TCP
/// give `None`.
fn turn_udp_address(url: &str) -> Option<std::net::SocketAddr> {
    use std::net::SocketAddr;
    let rest = url.strip_prefix("turn:")?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !query.is_empty() && query != "transport=udp" {
        return None;
    }
    hostport.parse::<SocketAddr>().ok().or_else(|| {
        hostport
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 3478))
    })
}

#[cfg(test)]
mod turn_url_tests {
    use super::turn_udp_address;

    #[test]
    fn only_udp_ip_literals_become_an_alternate() {
        let a = |s: &str| turn_udp_address(s).map(|a| a.to_string());
        assert_eq!(
            a("turn:192.0.2.1:3480?transport=udp").as_deref(),
            Some("192.0.2.1:3480")
        );
        assert_eq!(a("turn:192.0.2.1").as_deref(), Some("192.0.2.1:3478"));
        assert_eq!(
            a("turn:[2001:db8::1]:3479").as_deref(),
            Some("[2001:db8::1]:3479")
        );
        assert_eq!(a("turn:relay.example:3478"), None);
        assert_eq!(a("turn:192.0.2.1:3478?transport=tcp"), None);
        assert_eq!(a("turns:192.0.2.1:5349"), None);
    }
}

#[cfg(test)]
mod choose_tests {
    use super::{Info, choose, parse_info};

    fn info(entries: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        entries.iter().map(|(m, i)| (*m, i.to_string())).collect()
    }

    #[test]
    fn the_least_loaded_relay_of_our_region_is_handed_out() {
        let published = info(&[
            ("a1", "5 10 region=eu turn:192.0.2.1:3478"),
            ("a2", "3 10 region=eu turn:192.0.2.2:3478"),
            ("b1", "0 0 region=us turn:192.0.2.3:3478"),
            ("c1", "0 0 turn:192.0.2.4:3478"),
        ]);
        // The region's least loaded, although elsewhere is idler; the alternate of a full
        // server stays in the region too.
        let (best, alternate) = choose("a2", Some("eu"), &published);
        assert_eq!(best.unwrap(), ["turn:192.0.2.2:3478"]);
        assert_eq!(alternate.unwrap(), ["turn:192.0.2.1:3478"]);
        // The only instance of its region: its own relay, and a full one's Allocates go to
        // the least loaded of the rest (ties to the lower id).
        let (best, alternate) = choose("b1", Some("us"), &published);
        assert_eq!(best.unwrap(), ["turn:192.0.2.3:3478"]);
        assert_eq!(alternate.unwrap(), ["turn:192.0.2.4:3478"]);
        // A region nobody serves, or no region at all: the least loaded anywhere.
        let (best, _) = choose("x", Some("asia"), &published);
        assert_eq!(best.unwrap(), ["turn:192.0.2.3:3478"]);
        let (best, alternate) = choose("b1", None, &published);
        assert_eq!(best.unwrap(), ["turn:192.0.2.3:3478"]);
        assert_eq!(alternate.unwrap(), ["turn:192.0.2.4:3478"]);
        // Nobody publishes a relay.
        assert_eq!(choose("a1", Some("eu"), &[]), (None, None));
    }

    #[test]
    fn published_info_is_read_without_trust() {
        let info = |load, region, urls: &[&str]| {
            Some(Info {
                load,
                region,
                urls: urls.iter().map(|u| u.to_string()).collect(),
            })
        };
        assert_eq!(
            parse_info("1 2 region=eu-west.1 turn:a turn:b"),
            info((1, 2), Some("eu-west.1"), &["turn:a", "turn:b"])
        );
        // Without a region (what instances without --cluster-region write).
        assert_eq!(parse_info("0 0 turn:a"), info((0, 0), None, &["turn:a"]));
        // A region word that is not a region names none, and is never handed out as a URL.
        assert_eq!(
            parse_info("0 0 region=a/b turn:a"),
            info((0, 0), None, &["turn:a"])
        );
        for bad in ["", "1", "x 2 turn:a", "1 2", "1 2 region=eu", "-1 2 turn:a"] {
            assert_eq!(parse_info(bad), None, "{bad:?}");
        }
        let long = format!("0 0 turn:{}", "a".repeat(300));
        assert_eq!(parse_info(&long), None);
        let many: String = (0..20).map(|k| format!(" turn:h{k}")).collect();
        assert_eq!(parse_info(&format!("0 0{many}")).unwrap().urls.len(), 8);
    }
}
