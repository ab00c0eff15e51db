//! Three fogd instances on 127.0.0.2–4 sharing one Redis (started here, on a free port, with
//! persistence off): hundreds of peers spread across them look each other up and offer across
//! instances; then one instance is killed (its peers are offline at once, its lease is gone
//! after [`LEASE`], they reconnect elsewhere and are reachable again), one is stopped with
//! SIGSTOP past its lease and continued (peers that moved meanwhile keep their newer
//! registration), Redis restarts (everyone registers again), and one alias is claimed from two
//! instances at once (exactly one wins).
//!
//! Needs `redis-server`: skipped without it, failed with `FOG_REQUIRE_INTEROP=1` (as CI sets).

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use fog_signal::client::Event;
use fog_signal::msg::ErrorCode;
use fog_signal::{KeyPair, PeerId};
use fog_test_support::{find_tool, skip_or_fail};
use support::ChildGuard;
use support::signal::{SignalPeer, description};

const REALM: &str = "cluster.test";
const WAIT: Duration = Duration::from_secs(5);
/// fogd's lease (cluster::LEASE).
const LEASE: Duration = Duration::from_millis(1_500);
/// Peers per instance.
const PER_INSTANCE: usize = 200;

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("binding a TCP port")
        .local_addr()
        .unwrap()
        .port()
}

fn seed(i: usize) -> [u8; 32] {
    let mut s = [0x5a; 32];
    s[..8].copy_from_slice(&(i as u64).to_be_bytes());
    s
}

fn peer_id(i: usize) -> PeerId {
    KeyPair::from_seed(&seed(i)).peer_id()
}

struct Redis {
    exe: PathBuf,
    port: u16,
    child: Option<ChildGuard>,
}

impl Redis {
    fn start(exe: &Path) -> Redis {
        let mut redis = Redis {
            exe: exe.to_owned(),
            port: free_port(ip(1)),
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut command = Command::new(&self.exe);
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let mut child = ChildGuard::spawn("redis-server", &mut command).expect("redis-server");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut con) = self.con_once() {
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline && child.try_wait().is_none(),
                "redis-server did not start\n{}",
                child.output_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn con_once(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    fn con(&self) -> redis::Connection {
        self.con_once().expect("connecting to redis")
    }

    fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query(&mut self.con()).unwrap()
    }

    fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(child.id(), "KILL");
            child.wait_timeout(WAIT).expect("redis-server did not die");
        }
        self.spawn();
    }
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

struct Instance {
    child: ChildGuard,
    addr: SocketAddr,
    id: String,
}

fn start_instance(n: u8, key: &Path, redis: &Redis) -> Instance {
    // TURN credentials for a relay "on" this instance (signaling only hands them out).
    let url = format!("turn:127.0.0.{n}:3478");
    start_instance_with(n, key, redis, &["--turn-url", &url])
}

/// An instance with `turn` as its TURN flags (beside the shared secret).
fn start_instance_with(n: u8, key: &Path, redis: &Redis, turn: &[&str]) -> Instance {
    let id = format!("fogd-{n}");
    let addr = SocketAddr::new(ip(n), free_port(ip(n)));
    let mut command = Command::new(env!("CARGO_BIN_EXE_fogd"));
    command
        .arg("--signal")
        .arg(addr.to_string())
        .arg("--key")
        .arg(key)
        .args(["--realm", REALM, "--cluster", &redis.url()])
        .args(["--cluster-instance", &id])
        .args(["--turn-secret", "cluster secret"])
        .args(turn)
        .env("RUST_LOG", "info,fogd::cluster=debug")
        // Every test peer answers many offers from one test thread.
        .args(["--frames-per-second", "1000", "--max-pending-offers", "64"]);
    let mut child = ChildGuard::spawn("fogd", &mut command).expect("spawning fogd");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = child.stderr_text();
        if log.contains("signal listening")
            && log.contains("cluster: subscribed")
            && log.contains("cluster: lease taken")
        {
            return Instance { child, addr, id };
        }
        assert!(
            Instant::now() < deadline && child.try_wait().is_none(),
            "fogd {id} did not join the cluster\n{}",
            child.output_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `from` sees `target` online (by key, or alias when `target` is not a key).
fn lookup(from: &mut SignalPeer, target: &str) -> (Option<PeerId>, bool) {
    let request = from.client.lookup(target).unwrap();
    match from.wait_for(
        WAIT,
        |e| matches!(e, Event::LookupResult { request: r, .. } if *r == request),
    ) {
        Event::LookupResult { peer, online, .. } => (peer, online),
        _ => unreachable!(),
    }
}

/// Polls until `from` sees `target` as `online`; the time it took.
fn until_seen(from: &mut SignalPeer, target: PeerId, online: bool, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if lookup(from, &target.to_string()).1 == online {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{target} not seen {} within {within:?}",
            if online { "online" } else { "offline" }
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `a` offers to `b`, `b` answers, both are told when to punch.
fn offer_answer(a: &mut SignalPeer, b: &mut SignalPeer) {
    let (a_id, b_id) = (a.client.peer_id(), b.client.peer_id());
    let request = a.client.connect(b_id, description(1)).unwrap();
    let sent = a.wait_for(WAIT, |e| match e {
        Event::OfferSent { request: r, .. } => *r == request,
        Event::Error { request: r, .. } => *r == Some(request),
        _ => false,
    });
    let Event::OfferSent { session, .. } = sent else {
        panic!("offer {a_id} -> {b_id} refused: {sent:?}");
    };
    let offer = b.wait_for(
        WAIT,
        |e| matches!(e, Event::Offer { session: s, .. } if *s == session),
    );
    assert!(matches!(offer, Event::Offer { from, .. } if from == a_id));
    b.client.answer(session, description(2)).unwrap();
    b.send_queued();
    let answer = a.wait_for(
        WAIT,
        |e| matches!(e, Event::Answer { session: s, .. } if *s == session),
    );
    assert!(matches!(answer, Event::Answer { from, .. } if from == b_id));
    for p in [a, b] {
        p.wait_for(
            WAIT,
            |e| matches!(e, Event::PunchAt { session: s, .. } if *s == session),
        );
    }
}

/// Peer `i` joins instance `inst`.
fn join(inst: &Instance, i: usize, alias: Option<&str>) -> SignalPeer {
    SignalPeer::join_seed(inst.addr, None, REALM, seed(i), alias)
}

#[test]
fn a_cluster_of_three_survives_a_kill_a_stall_and_a_redis_restart() {
    let test = "a_cluster_of_three_survives_a_kill_a_stall_and_a_redis_restart";
    let Some(redis_exe) = find_tool("redis-server") else {
        skip_or_fail(test, "redis-server is not installed", "FOG_REQUIRE_INTEROP");
        return;
    };
    let started = Instant::now();
    let mut redis = Redis::start(&redis_exe);
    // One identity for the whole cluster: clients may pin it.
    let key = fog_test_support::scratch_file("cluster-server.key");
    let _ = std::fs::remove_file(&key);
    fog_signal::keyfile::save(&key, &KeyPair::from_seed(&[0xc1; 32])).unwrap();
    let mut instances: Vec<Option<Instance>> = (2..=4)
        .map(|n| Some(start_instance(n, &key, &redis)))
        .collect();

    // Peers 0.. spread round-robin: peer i on instance i % 3.
    let total = 3 * PER_INSTANCE;
    let mut peers: Vec<SignalPeer> = (0..total)
        .map(|i| join(instances[i % 3].as_ref().unwrap(), i, None))
        .collect();
    eprintln!("{total} peers joined in {:?}", started.elapsed());

    // Everyone is visible from another instance, by key.
    for i in 0..total {
        let from = (i + 1) % total;
        until_seen(&mut peers[from], peer_id(i), true, WAIT);
    }
    // Offers across instances: each peer offers to the next one (on the next instance).
    for i in (0..total).step_by(3) {
        let j = (i + 1) % total;
        let (a, b) = two(&mut peers, i, j);
        offer_answer(a, b);
    }
    // The same instance still works as before.
    {
        let (a, b) = two(&mut peers, 0, 3);
        offer_answer(a, b);
    }
    eprintln!("lookups and offers done at {:?}", started.elapsed());

    // TURN: every instance hands out the least-loaded instance's relay (no allocations, equal
    // peers: the lowest id), then a less loaded one that appears in Redis.
    let relay_urls = |p: &mut SignalPeer| {
        let r = p.client.request_relay().unwrap();
        match p.wait_for(
            WAIT,
            |e| matches!(e, Event::RelayCredentials { request, .. } if *request == r),
        ) {
            Event::RelayCredentials { urls, .. } => urls,
            _ => unreachable!(),
        }
    };
    // (Loads are published every second: the joins above may still be settling.)
    for (p, peer) in peers.iter_mut().enumerate().take(3) {
        let deadline = Instant::now() + WAIT;
        while relay_urls(peer) != ["turn:127.0.0.2:3478"] {
            assert!(
                Instant::now() < deadline,
                "instance {p} hands out another relay"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    let mut con = redis.con();
    redis::pipe()
        .cmd("SET")
        .arg("fog:info:fogd-9")
        .arg("0 0 turn:192.0.2.9:3478")
        .arg("PX")
        .arg(4_000)
        .cmd("SADD")
        .arg("fog:instances")
        .arg("fogd-9")
        .exec(&mut con)
        .unwrap();
    for (p, peer) in peers.iter_mut().enumerate().take(3) {
        let deadline = Instant::now() + WAIT;
        while relay_urls(peer) != ["turn:192.0.2.9:3478"] {
            assert!(Instant::now() < deadline, "instance {p} kept its relay");
            thread::sleep(Duration::from_millis(100));
        }
    }

    // An alias, claimed on one instance, resolves on the others.
    let r = peers[0].client.register("printer-7").unwrap();
    let got = peers[0].wait_for(WAIT, |e| {
        matches!(e, Event::Registered { request, .. } | Event::Error { request: Some(request), .. } if *request == r)
    });
    assert!(matches!(got, Event::Registered { .. }), "{got:?}");
    assert_eq!(lookup(&mut peers[1], "printer-7"), (Some(peer_id(0)), true));
    assert_eq!(lookup(&mut peers[2], "Printer-7"), (Some(peer_id(0)), true));

    // One alias from two instances at once: exactly one wins, every time.
    for k in 0..20 {
        let alias = format!("race-{k}");
        let (x, y) = (3 + k * 3 + 1, 3 + k * 3 + 2); // on instances 1 and 2 (ids fogd-3, fogd-4)
        let rx = peers[x].client.register(&alias).unwrap();
        let ry = peers[y].client.register(&alias).unwrap();
        peers[x].send_queued();
        peers[y].send_queued();
        let mut winners = Vec::new();
        for (p, r) in [(x, rx), (y, ry)] {
            match peers[p].wait_for(WAIT, |e| match e {
                Event::Registered { request, .. } => *request == r,
                Event::Error { request, .. } => *request == Some(r),
                _ => false,
            }) {
                Event::Registered { .. } => winners.push(p),
                Event::Error { code, .. } => assert_eq!(code, ErrorCode::AliasTaken),
                _ => unreachable!(),
            }
        }
        assert_eq!(winners.len(), 1, "{alias}: winners {winners:?}");
        assert_eq!(
            lookup(&mut peers[0], &alias),
            (Some(peer_id(winners[0])), true)
        );
    }

    // Kill the third instance (fogd-4, peers 2, 5, 8, ...).
    let killed = instances[2].take().unwrap();
    let mut killed_child = killed.child;
    kill(killed_child.id(), "KILL");
    killed_child.wait_timeout(WAIT).expect("fogd did not die");
    let offline_after = until_seen(&mut peers[0], peer_id(2), false, WAIT);
    eprintln!("a killed instance's peer was offline after {offline_after:?}");
    assert!(offline_after < Duration::from_secs(3));
    // An offer to it is refused at once.
    let r = peers[0].client.connect(peer_id(5), description(1)).unwrap();
    let refused = peers[0].wait_for(WAIT, |e| match e {
        Event::OfferSent { request, .. } => *request == r,
        Event::Error { request, .. } => *request == Some(r),
        _ => false,
    });
    assert!(
        matches!(
            refused,
            Event::Error {
                code: ErrorCode::UnknownPeer,
                ..
            }
        ),
        "{refused:?}"
    );
    // No stale presence after the lease.
    thread::sleep(LEASE + Duration::from_millis(500));
    let lease_key = format!("fog:lease:{}", killed.id);
    assert_eq!(redis.get(&lease_key), None, "the lease outlived its TTL");
    // Its peers reconnect to the two others and are reachable again.
    for i in (2..total).step_by(3) {
        let to = instances[i % 2].as_ref().unwrap();
        peers[i] = join(to, i, None);
    }
    for i in (2..total).step_by(3) {
        // Peer i + 1 is on fogd-2; each peer asks once (a connection's frame rate is bounded).
        until_seen(&mut peers[(i + 1) % total], peer_id(i), true, WAIT);
    }
    {
        let (a, b) = two(&mut peers, 0, 5);
        offer_answer(a, b);
    }
    eprintln!("kill and reconnect done at {:?}", started.elapsed());

    // Stall the second instance (fogd-3, peers 1, 4, 7, ...) past its lease.
    let stalled_pid = instances[1].as_ref().unwrap().child.id();
    kill(stalled_pid, "STOP");
    let stopped = Instant::now();
    // Meanwhile some of its peers reconnect to the first instance.
    let moved: Vec<usize> = (1..total).step_by(3).take(20).collect();
    for &i in &moved {
        peers[i] = join(instances[0].as_ref().unwrap(), i, None);
    }
    // Its other peers are offline once the lease ran out: within the 3 s of the stall
    // (the lease is 1.5 s; the rest is margin for a busy machine).
    let stayed = moved.last().unwrap() + 3;
    until_seen(&mut peers[0], peer_id(stayed), false, WAIT);
    let offline_after = stopped.elapsed();
    eprintln!("a stalled instance's peer was offline after {offline_after:?}");
    assert!(offline_after < Duration::from_secs(3), "{offline_after:?}");
    thread::sleep(Duration::from_millis(500));
    kill(stalled_pid, "CONT");
    // It takes a new lease and registers its peers again, but not those that moved.
    until_seen(&mut peers[0], peer_id(stayed), true, WAIT);
    thread::sleep(Duration::from_millis(1_500));
    for &i in &moved {
        let value = redis.get(&format!("fog:peer:{}", peer_id(i))).unwrap();
        assert!(
            value.starts_with("fogd-2 "),
            "peer {i} moved to fogd-2, Redis says {value}"
        );
    }
    {
        let (a, b) = two(&mut peers, 3, moved[3]);
        offer_answer(a, b);
        let (a, b) = two(&mut peers, 0, stayed);
        offer_answer(a, b);
    }
    eprintln!("stall done at {:?}", started.elapsed());

    // Redis restarts empty: everyone registers again, aliases too.
    redis.restart();
    let restarted = Instant::now();
    for i in 0..total {
        let from = (i + 1) % total;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lookup(&mut peers[from], &peer_id(i).to_string()).1 {
            if Instant::now() > deadline {
                let mut con = redis.con();
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("fog:lease:*")
                    .query(&mut con)
                    .unwrap();
                let subs: Vec<redis::Value> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg("fog:ch:fogd-2")
                    .arg("fog:ch:fogd-3")
                    .query(&mut con)
                    .unwrap();
                let dbsize: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
                panic!(
                    "peer {i} not online again: its key {:?}; leases {keys:?}; subs {subs:?}; dbsize {dbsize}\n{}\n{}",
                    redis.get(&format!("fog:peer:{}", peer_id(i))),
                    instances[0].as_ref().unwrap().child.stderr_text(),
                    instances[1].as_ref().unwrap().child.stderr_text(),
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!(
        "all {total} peers registered again {:?} after the Redis restart",
        restarted.elapsed()
    );
    assert_eq!(lookup(&mut peers[1], "printer-7"), (Some(peer_id(0)), true));
    {
        let (a, b) = two(&mut peers, 1, 2);
        offer_answer(a, b);
    }
    eprintln!("done in {:?}", started.elapsed());
    drop(peers);
    for inst in instances.iter_mut().flatten() {
        inst.child.terminate(WAIT);
        let log = inst.child.stderr_text();
        assert!(log.contains("cluster stopped"), "{log}");
    }
}

/// Two distinct peers, mutably.
fn two(peers: &mut [SignalPeer], i: usize, j: usize) -> (&mut SignalPeer, &mut SignalPeer) {
    assert_ne!(i, j);
    if i < j {
        let (l, r) = peers.split_at_mut(j);
        (&mut l[i], &mut r[0])
    } else {
        let (l, r) = peers.split_at_mut(i);
        (&mut r[0], &mut l[j])
    }
}

/// A TURN client on a socket of its own, driven until `done` holds or 5 s pass; its events.
fn drive_turn(
    client: &mut fog_turn::client::Client,
    socket: &std::net::UdpSocket,
    done: impl Fn(&[fog_turn::client::Event]) -> bool,
) -> Vec<fog_turn::client::Event> {
    use fog_core::{Receive, SansIo};
    let mut events = Vec::new();
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + WAIT;
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    while !done(&events) && Instant::now() < deadline {
        let now = Instant::now();
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            socket.send_to(&buf[..t.len], t.destination).unwrap();
        }
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let local = socket.local_addr().unwrap();
            let payload = buf[..n].to_vec();
            let p = Receive {
                source: from,
                local,
                payload: &payload,
            };
            if client.accepts(&p) {
                client.handle_packet(Instant::now(), p);
            }
        }
        if client.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            client.handle_timeout(Instant::now());
        }
        events.extend(std::iter::from_fn(|| client.poll_event()));
    }
    events
}

/// issue 14 item 3: a full TURN server sheds an Allocate to the least-loaded other instance
/// (300 Try Alternate, RFC 8489 §10), which the client follows with the same credentials (the
/// instances share the secret).
#[test]
fn a_full_turn_server_sends_allocations_to_another_instance() {
    use fog_turn::client::{Client, ClientConfig, Event as TurnEvent};
    let test = "a_full_turn_server_sends_allocations_to_another_instance";
    let Some(redis_exe) = find_tool("redis-server") else {
        skip_or_fail(test, "redis-server is not installed", "FOG_REQUIRE_INTEROP");
        return;
    };
    let redis = Redis::start(&redis_exe);
    let key = fog_test_support::scratch_file("cluster-turn.key");
    let _ = std::fs::remove_file(&key);
    fog_signal::keyfile::save(&key, &KeyPair::from_seed(&[0xc2; 32])).unwrap();
    let turn = |n: u8| SocketAddr::new(ip(n), free_port(ip(n)));
    let (turn_a, turn_b) = (turn(5), turn(6));
    let (a_listen, b_listen) = (turn_a.to_string(), turn_b.to_string());
    // A takes one allocation; B many.
    let a = start_instance_with(
        5,
        &key,
        &redis,
        &["--turn", &a_listen, "--turn-max-allocations", "1"],
    );
    let b = start_instance_with(6, &key, &redis, &["--turn", &b_listen]);
    // A learns B as its alternate at a heartbeat (once a second).
    let deadline = Instant::now() + WAIT;
    while !a.child.stderr_text().contains(&format!("Some({turn_b})")) {
        assert!(
            Instant::now() < deadline,
            "A never named B its alternate\n{}",
            a.child.output_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let secret = fog_turn::auth::AuthSecret::new(b"cluster secret".to_vec());
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let allocate = |user: &str, seed: u64| {
        let socket = std::net::UdpSocket::bind((ip(1), 0)).unwrap();
        let (username, password) = secret.credentials(expiry, user);
        let mut client = Client::new(ClientConfig::new(turn_a, username, password, seed));
        client.allocate(Instant::now()).unwrap();
        let events = drive_turn(&mut client, &socket, |e| {
            e.iter()
                .any(|e| matches!(e, TurnEvent::Allocated { .. } | TurnEvent::Error(_)))
        });
        (client, events, socket)
    };
    let (first, events, _s1) = allocate("first", 1);
    assert!(
        matches!(events.as_slice(), [TurnEvent::Allocated { relayed, .. }] if relayed.ip() == turn_a.ip()),
        "{events:?}"
    );
    assert_eq!(first.server(), turn_a);
    // A is full now: the next Allocate is sent on to B, and made there.
    let (second, events, _s2) = allocate("second", 2);
    assert!(
        matches!(
            events.as_slice(),
            [TurnEvent::Redirected { from, to }, TurnEvent::Allocated { relayed, .. }]
                if *from == turn_a && *to == turn_b && relayed.ip() == turn_b.ip()
        ),
        "{events:?}\n{}",
        a.child.output_text()
    );
    assert_eq!(second.server(), turn_b);
    drop(b);
}

/// issue 14 item 3, "near the peer": three instances, two in region `eu` and one in `us`,
/// one peer on each (equal loads). A peer is handed the least-loaded relay of its own
/// instance's region (ties to the lower id): `eu` peers get fogd-7's, the `us` peer fogd-9's,
/// although fogd-7 would win everywhere if regions were ignored.
#[test]
fn relays_are_handed_out_from_the_peers_region() {
    let test = "relays_are_handed_out_from_the_peers_region";
    let Some(redis_exe) = find_tool("redis-server") else {
        skip_or_fail(test, "redis-server is not installed", "FOG_REQUIRE_INTEROP");
        return;
    };
    let redis = Redis::start(&redis_exe);
    let key = fog_test_support::scratch_file("cluster-region.key");
    let _ = std::fs::remove_file(&key);
    fog_signal::keyfile::save(&key, &KeyPair::from_seed(&[0xc3; 32])).unwrap();
    let instances: Vec<Instance> = [(7, "eu"), (8, "eu"), (9, "us")]
        .into_iter()
        .map(|(n, region)| {
            let url = format!("turn:127.0.0.{n}:3478");
            start_instance_with(
                n,
                &key,
                &redis,
                &["--turn-url", &url, "--cluster-region", region],
            )
        })
        .collect();
    let mut peers: Vec<SignalPeer> = instances
        .iter()
        .enumerate()
        .map(|(k, inst)| join(inst, 900 + k, None))
        .collect();
    let want = [
        "turn:127.0.0.7:3478",
        "turn:127.0.0.7:3478",
        "turn:127.0.0.9:3478",
    ];
    // (Loads are published every second: the joins may still be settling.)
    for (k, peer) in peers.iter_mut().enumerate() {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = peer.client.request_relay().unwrap();
            let urls = match peer.wait_for(
                WAIT,
                |e| matches!(e, Event::RelayCredentials { request, .. } if *request == r),
            ) {
                Event::RelayCredentials { urls, .. } => urls,
                _ => unreachable!(),
            };
            if urls == [want[k]] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the peer on {} was handed {urls:?}, not {}\n{}",
                instances[k].id,
                want[k],
                instances[k].child.output_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}
