//! An RFC 4787 NAT (or a stateful firewall without translation), as a pure translation table.
//!
//! The table knows nothing of links or events: the simulator asks it to translate a datagram going
//! out or coming in at a given instant, and it answers with the new endpoint or the reason for a
//! drop. Each property of [`NatConfig`] works on its own, so any combination can be built.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::RngExt as _;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;

use crate::behaviour::{Behaviour, Filtering, Mapping, PortAssignment};

/// Linux conntrack's `nf_conntrack_udp_timeout`: a flow that never saw a reply.
pub const LINUX_UDP_UNREPLIED: Duration = Duration::from_secs(30);
/// Linux conntrack's `nf_conntrack_udp_timeout_stream`: a flow that has seen replies.
pub const LINUX_UDP_ESTABLISHED: Duration = Duration::from_secs(120);

/// What refreshes a binding's timer (RFC 4787 §4.3, REQ-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refresh {
    /// Only datagrams going out refresh the binding (REQ-6 requires this much).
    OutboundOnly,
    /// Datagrams in both directions refresh it (Linux conntrack).
    Both,
}

/// Idle timeouts of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Lifetime of a binding that has never let a datagram in.
    pub unreplied: Duration,
    /// Lifetime of a binding once a datagram has come in through it.
    pub established: Duration,
}

impl Default for Timeouts {
    /// Linux conntrack's 30 s / 120 s.
    fn default() -> Self {
        Self {
            unreplied: LINUX_UDP_UNREPLIED,
            established: LINUX_UDP_ESTABLISHED,
        }
    }
}

/// Every property of a NAT, each settable on its own (RFC 4787).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping behaviour (§4.1).
    pub mapping: Mapping,
    /// Filtering behaviour (§5).
    pub filtering: Filtering,
    /// Port assignment (§4.2.1).
    pub ports: PortAssignment,
    /// External ports the NAT may use.
    pub port_range: RangeInclusive<u16>,
    /// Keep the internal port's parity in the external port (§4.2.2, REQ-4).
    pub preserve_parity: bool,
    /// Whether a host can reach another host behind this NAT through its external address (§6,
    /// REQ-9). Hairpinned datagrams carry the sender's external endpoint as their source and are
    /// not filtered: the NAT knows they come from inside.
    pub hairpinning: bool,
    /// Binding lifetimes (§4.3).
    pub timeouts: Timeouts,
    /// Which direction refreshes a binding.
    pub refresh: Refresh,
    /// Most bindings alive at once; a new one beyond this is refused and the datagram dropped.
    pub max_bindings: usize,
    /// An unsolicited inbound datagram leaves state (a Linux conntrack entry for the remote
    /// endpoint and the external port it hit) that lasts `timeouts.unreplied`, refreshed by each
    /// further such datagram. While it lasts, a new outbound flow from the host that owns that port
    /// to that remote endpoint cannot reuse the port and gets a fresh one, as if the NAT were
    /// symmetric for that one flow. STUN classifiers do not see it.
    pub inbound_leaves_state: bool,
    /// `false` makes this a stateful firewall: no translation (the host's address is routable
    /// from outside), but the same filtering, timeouts and binding cap.
    pub translate: bool,
}

impl NatConfig {
    /// A NAT with the given mapping and filtering, port preservation, parity kept, no hairpinning,
    /// Linux timeouts refreshed both ways, 65,536 bindings at most, no inbound state.
    pub fn new(mapping: Mapping, filtering: Filtering) -> Self {
        Self {
            mapping,
            filtering,
            ports: PortAssignment::Preserve,
            port_range: 1024..=65535,
            preserve_parity: false,
            hairpinning: false,
            timeouts: Timeouts::default(),
            refresh: Refresh::Both,
            max_bindings: 65_536,
            inbound_leaves_state: false,
            translate: true,
        }
    }

    /// A stateful firewall without translation.
    pub fn firewall(filtering: Filtering) -> Self {
        Self {
            translate: false,
            ..Self::new(Mapping::EndpointIndependent, filtering)
        }
    }

    /// What an ideal outside observer learns of this device alone.
    pub fn behaviour(&self) -> Behaviour {
        if !self.translate {
            return match self.filtering {
                Filtering::EndpointIndependent => Behaviour::Open,
                filtering => Behaviour::Firewall { filtering },
            };
        }
        Behaviour::Nat {
            mapping: self.mapping,
            filtering: self.filtering,
            ports: self.ports.into(),
            hairpinning: self.hairpinning,
        }
    }
}

/// Why the NAT dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatDrop {
    /// Inbound to an external port with no live binding.
    NoBinding,
    /// Inbound from an endpoint the filter does not let through.
    Filtered,
    /// A new binding was needed and the table is full (or no port is free).
    TableFull,
    /// A datagram to the NAT's own external address while hairpinning is off.
    HairpinOff,
}

/// Which destinations share one binding, per the mapping behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum MapKey {
    Any,
    Ip(IpAddr),
    Endpoint(SocketAddr),
}

#[derive(Debug, Clone)]
struct Binding {
    internal: SocketAddr,
    key: MapKey,
    /// Last refresh (outbound, or inbound with `Refresh::Both`).
    refreshed: Instant,
    expires: Instant,
    established: bool,
    /// Remote endpoints this binding has sent to: the filter's permissions (RFC 4787 §5 ties
    /// them to the binding's lifetime).
    contacted: BTreeSet<SocketAddr>,
}

/// The live state of one NAT device.
#[derive(Debug)]
pub(crate) struct NatTable {
    config: NatConfig,
    external_ip: IpAddr,
    /// External port → binding. A firewall keys by the internal endpoint instead (see `by_port`).
    by_port: BTreeMap<u16, Binding>,
    /// Firewall bindings, keyed by the (public) internal endpoint.
    by_endpoint: BTreeMap<SocketAddr, Binding>,
    /// (internal endpoint, key) → external port; lookups only, never iterated.
    by_internal: FxHashMap<(SocketAddr, MapKey), u16>,
    /// (external port, remote) → expiry: state left by unsolicited inbound datagrams.
    inbound_state: BTreeMap<(u16, SocketAddr), Instant>,
    /// External ports that are not free until the given instant although no binding of ours
    /// holds them (see [`NatTable::rebind`]).
    reserved: BTreeMap<u16, Instant>,
    last_port: Option<u16>,
}

impl NatTable {
    pub(crate) fn new(config: NatConfig, external_ip: IpAddr) -> Self {
        assert!(
            config.port_range.start() <= config.port_range.end(),
            "NAT port range must not be empty"
        );
        if let PortAssignment::Sequential { delta } = config.ports {
            assert!(delta != 0, "sequential port delta must be non-zero");
        }
        Self {
            config,
            external_ip,
            by_port: BTreeMap::new(),
            by_endpoint: BTreeMap::new(),
            by_internal: FxHashMap::default(),
            inbound_state: BTreeMap::new(),
            reserved: BTreeMap::new(),
            last_port: None,
        }
    }

    pub(crate) fn config(&self) -> &NatConfig {
        &self.config
    }

    /// Forgets every binding and all inbound state, as a reboot does.
    pub(crate) fn forget(&mut self) {
        self.by_port.clear();
        self.by_endpoint.clear();
        self.by_internal.clear();
        self.inbound_state.clear();
    }

    /// Forgets every binding as [`forget`](Self::forget) does, and keeps each external port
    /// they held out of use until `until`, as when a router's conntrack table is flushed and
    /// other flows take those ports first: each flow's next datagram out gets a new external
    /// port even with port preservation.
    pub(crate) fn rebind(&mut self, until: Instant) {
        for &port in self.by_port.keys() {
            self.reserved.insert(port, until);
        }
        self.forget();
    }

    pub(crate) fn external_ip(&self) -> IpAddr {
        self.external_ip
    }

    /// Live bindings at `now`.
    pub(crate) fn binding_count(&mut self, now: Instant) -> usize {
        self.sweep(now);
        self.by_port.len() + self.by_endpoint.len()
    }

    fn key_for(&self, remote: SocketAddr) -> MapKey {
        match self.config.mapping {
            Mapping::EndpointIndependent => MapKey::Any,
            Mapping::AddressDependent => MapKey::Ip(remote.ip()),
            Mapping::AddressAndPortDependent => MapKey::Endpoint(remote),
        }
    }

    /// Translates a datagram from `internal` to `remote` going out; returns the external source.
    pub(crate) fn outbound(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        remote: SocketAddr,
        rng: &mut ChaCha8Rng,
    ) -> Result<SocketAddr, NatDrop> {
        if !self.config.translate {
            return self.firewall_outbound(now, internal, remote);
        }
        // A flow-specific binding made because of inbound state wins over the mapping's own.
        let port = match self.live_port(now, internal, MapKey::Endpoint(remote)) {
            Some(port) => Some(port),
            None => self.live_port(now, internal, self.key_for(remote)),
        };
        let port = match port {
            Some(port) if self.blocked_new_flow(now, port, remote) => {
                self.create(now, internal, MapKey::Endpoint(remote), rng)?
            }
            Some(port) => port,
            None => {
                let key = self.key_for(remote);
                let port = self.create(now, internal, key, rng)?;
                if key != MapKey::Endpoint(remote) && self.blocked_new_flow(now, port, remote) {
                    // The mapping's own port is unusable towards this peer: it never carried a
                    // datagram, so give it back and take a flow-specific one, chosen while the
                    // port is still held (the inbound state holds it toward this peer; given
                    // back first, a preserving NAT would hand out the same port again).
                    self.remove(port);
                    self.reserved.insert(port, now + Duration::from_secs(1));
                    let flow = self.create(now, internal, MapKey::Endpoint(remote), rng);
                    self.reserved.remove(&port);
                    flow?
                } else {
                    port
                }
            }
        };
        let timeouts = self.config.timeouts;
        self.by_port
            .get_mut(&port)
            .expect("binding exists for a port just found")
            .sent(now, remote, timeouts);
        Ok(SocketAddr::new(self.external_ip, port))
    }

    /// Translates a datagram from `remote` to the external endpoint `external` coming in; returns the
    /// internal destination.
    pub(crate) fn inbound(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        external: SocketAddr,
    ) -> Result<SocketAddr, NatDrop> {
        if !self.config.translate {
            return self.firewall_inbound(now, remote, external);
        }
        let port = external.port();
        let verdict = match self.by_port.get_mut(&port) {
            Some(b) => b.admit(now, remote, &self.config),
            None => Err(NatDrop::NoBinding),
        };
        if verdict.is_err() && self.config.inbound_leaves_state {
            self.inbound_state
                .insert((port, remote), now + self.config.timeouts.unreplied);
        }
        verdict
    }

    /// Delivers a hairpinned datagram: `sender_external` (already translated) to `target`, one of
    /// this NAT's external endpoints. Not filtered; see [`NatConfig::hairpinning`].
    pub(crate) fn hairpin(
        &mut self,
        now: Instant,
        target: SocketAddr,
    ) -> Result<SocketAddr, NatDrop> {
        if !self.config.hairpinning {
            return Err(NatDrop::HairpinOff);
        }
        match self.by_port.get(&target.port()) {
            Some(b) if b.expires > now => Ok(b.internal),
            _ => Err(NatDrop::NoBinding),
        }
    }

    fn live_port(&mut self, now: Instant, internal: SocketAddr, key: MapKey) -> Option<u16> {
        let port = *self.by_internal.get(&(internal, key))?;
        match self.by_port.get(&port) {
            Some(b) if b.expires > now && b.internal == internal && b.key == key => Some(port),
            _ => {
                self.remove(port);
                None
            }
        }
    }

    /// Whether inbound state forbids a new flow from `port` to `remote`.
    fn blocked_new_flow(&mut self, now: Instant, port: u16, remote: SocketAddr) -> bool {
        if !self.config.inbound_leaves_state {
            return false;
        }
        let already_flowing = self
            .by_port
            .get(&port)
            .is_some_and(|b| b.contacted.contains(&remote));
        if already_flowing {
            return false;
        }
        match self.inbound_state.get(&(port, remote)) {
            Some(&expires) if expires > now => true,
            Some(_) => {
                self.inbound_state.remove(&(port, remote));
                false
            }
            None => false,
        }
    }

    fn create(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        key: MapKey,
        rng: &mut ChaCha8Rng,
    ) -> Result<u16, NatDrop> {
        if self.by_port.len() >= self.config.max_bindings {
            self.sweep(now);
            if self.by_port.len() >= self.config.max_bindings {
                return Err(NatDrop::TableFull);
            }
        }
        let port = self
            .allocate_port(now, internal.port(), rng)
            .ok_or(NatDrop::TableFull)?;
        self.last_port = Some(port);
        self.by_internal.insert((internal, key), port);
        self.by_port.insert(port, Binding::new(internal, key, now));
        Ok(port)
    }

    fn port_free(&self, now: Instant, port: u16) -> bool {
        self.by_port.get(&port).is_none_or(|b| b.expires <= now)
            && self.reserved.get(&port).is_none_or(|&until| until <= now)
    }

    fn parity_ok(&self, port: u16, internal_port: u16) -> bool {
        !self.config.preserve_parity || port % 2 == internal_port % 2
    }

    fn allocate_port(
        &mut self,
        now: Instant,
        internal_port: u16,
        rng: &mut ChaCha8Rng,
    ) -> Option<u16> {
        let (lo, hi) = (
            *self.config.port_range.start(),
            *self.config.port_range.end(),
        );
        let span = u32::from(hi - lo) + 1;
        // Offsets within the range are walked in u32 so that wrap-around needs no special case.
        let at = |offset: u32| lo + (offset % span) as u16;
        let usable = |s: &Self, p: u16| s.port_free(now, p) && s.parity_ok(p, internal_port);
        let start = match self.config.ports {
            PortAssignment::Preserve => {
                if (lo..=hi).contains(&internal_port) {
                    u32::from(internal_port - lo)
                } else {
                    0
                }
            }
            PortAssignment::Sequential { delta } => match self.last_port {
                Some(last) => {
                    let step = delta.rem_euclid(span as i32) as u32;
                    let first = u32::from(last - lo) + step;
                    // Keep stepping by delta past ports in use, as a sequential NAT does.
                    for i in 0..span.min(64) {
                        let p = at(first + i * step % span);
                        if usable(self, p) {
                            return Some(self.claim(p));
                        }
                    }
                    first
                }
                None => rng.random_range(0..span),
            },
            PortAssignment::Random => {
                for _ in 0..32 {
                    let p = at(rng.random_range(0..span));
                    if usable(self, p) {
                        return Some(self.claim(p));
                    }
                }
                rng.random_range(0..span)
            }
        };
        // Fallback for every policy: the next usable port upwards, wrapping in the range.
        let port = (0..span)
            .map(|i| at(start + i))
            .find(|&p| usable(self, p))?;
        Some(self.claim(port))
    }

    /// Takes `port` for a new binding, first dropping an expired binding that still sits on it.
    fn claim(&mut self, port: u16) -> u16 {
        if self.by_port.contains_key(&port) {
            self.remove(port);
        }
        port
    }

    fn remove(&mut self, port: u16) {
        if let Some(b) = self.by_port.remove(&port) {
            let index = (b.internal, b.key);
            if self.by_internal.get(&index) == Some(&port) {
                self.by_internal.remove(&index);
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let dead: Vec<u16> = self
            .by_port
            .iter()
            .filter(|(_, b)| b.expires <= now)
            .map(|(&p, _)| p)
            .collect();
        for port in dead {
            self.remove(port);
        }
        self.by_endpoint.retain(|_, b| b.expires > now);
        self.inbound_state.retain(|_, &mut expires| expires > now);
        self.reserved.retain(|_, &mut until| until > now);
    }

    fn firewall_outbound(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        remote: SocketAddr,
    ) -> Result<SocketAddr, NatDrop> {
        let live = self
            .by_endpoint
            .get(&internal)
            .is_some_and(|b| b.expires > now);
        if !live {
            if self.by_endpoint.len() >= self.config.max_bindings {
                self.sweep(now);
                if self.by_endpoint.len() >= self.config.max_bindings {
                    return Err(NatDrop::TableFull);
                }
            }
            self.by_endpoint
                .insert(internal, Binding::new(internal, MapKey::Any, now));
        }
        let timeouts = self.config.timeouts;
        self.by_endpoint
            .get_mut(&internal)
            .expect("inserted above")
            .sent(now, remote, timeouts);
        Ok(internal)
    }

    fn firewall_inbound(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        internal: SocketAddr,
    ) -> Result<SocketAddr, NatDrop> {
        if self.config.filtering == Filtering::EndpointIndependent {
            return Ok(internal);
        }
        match self.by_endpoint.get_mut(&internal) {
            Some(b) => b.admit(now, remote, &self.config),
            None => Err(NatDrop::NoBinding),
        }
    }
}

impl Binding {
    fn new(internal: SocketAddr, key: MapKey, now: Instant) -> Self {
        Self {
            internal,
            key,
            refreshed: now,
            expires: now,
            established: false,
            contacted: BTreeSet::new(),
        }
    }

    /// A datagram to `remote` went out through this binding.
    fn sent(&mut self, now: Instant, remote: SocketAddr, timeouts: Timeouts) {
        self.contacted.insert(remote);
        self.refreshed = now;
        self.expires = now
            + if self.established {
                timeouts.established
            } else {
                timeouts.unreplied
            };
    }

    /// Filters a datagram from `remote` coming in at `now`; on success the binding is established
    /// (it lives `timeouts.established` after its last refresh from then on) and, with
    /// `Refresh::Both`, refreshed.
    fn admit(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        config: &NatConfig,
    ) -> Result<SocketAddr, NatDrop> {
        if self.expires <= now {
            return Err(NatDrop::NoBinding);
        }
        if !permits(config.filtering, &self.contacted, remote) {
            return Err(NatDrop::Filtered);
        }
        if !self.established {
            self.established = true;
            self.expires = self.refreshed + config.timeouts.established;
        }
        if config.refresh == Refresh::Both {
            self.refreshed = now;
            self.expires = now + config.timeouts.established;
        }
        Ok(self.internal)
    }
}

fn permits(filtering: Filtering, contacted: &BTreeSet<SocketAddr>, remote: SocketAddr) -> bool {
    match filtering {
        Filtering::EndpointIndependent => true,
        Filtering::AddressDependent => contacted.iter().any(|c| c.ip() == remote.ip()),
        Filtering::AddressAndPortDependent => contacted.contains(&remote),
    }
}
