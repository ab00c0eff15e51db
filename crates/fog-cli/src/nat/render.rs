//! The report for people (a table, like Tailscale's `netcheck`) and for programs (`--json`).
//!
//! Both are functions of the [`Outcome`] alone, so they are tested with hand-made reports.

use std::fmt::Write as _;
use std::net::SocketAddr;

use fog_core::nat::{Behaviour, Filtering, Mapping, PortPattern};
use fog_stun::discovery::{Lifetime, Test, Untested};
use serde_json::{Value, json};

use super::Outcome;

/// The JSON object's format; raised when a field changes meaning or disappears (new fields may
/// appear without it).
pub(crate) const JSON_FORMAT: u32 = 1;

/// The one-line verdict after "NAT type: ".
pub(crate) fn headline(outcome: &Outcome) -> String {
    let report = &outcome.report;
    if let (None, Some(why)) = (report.mapped, report.nat.untested()) {
        if report.behaviour != Behaviour::UdpBlocked {
            return format!("unknown (test I failed: {why})");
        }
    }
    let mut line = match report.behaviour {
        Behaviour::Open => "no NAT / open".to_owned(),
        Behaviour::UdpBlocked => "UDP blocked".to_owned(),
        Behaviour::Firewall { filtering } => format!("no NAT / firewall ({filtering})"),
        Behaviour::Nat {
            mapping,
            filtering,
            ports,
            ..
        } => format!(
            "{} ({mapping} + {filtering}, ports {})",
            report.classic_name,
            port_pattern_short(ports)
        ),
    };
    if !report.is_complete() {
        line.push_str(", assumed where untested");
    }
    line
}

/// The table, ending with a newline.
pub(crate) fn table(outcome: &Outcome) -> String {
    let report = &outcome.report;
    let mut rows: Vec<(&str, String)> = Vec::new();

    rows.push(("UDP", udp_row(outcome)));
    if let Some(x1) = report.mapped {
        rows.push((
            "Public address",
            format!("{x1} (X1, as the server sees us)"),
        ));
    }
    rows.push(("Local address", outcome.local.to_string()));
    rows.push((
        "NAT",
        match report.nat {
            Test::Tested(false) => "no: the public address is this host's own".to_owned(),
            Test::Tested(true) => "yes: the public address is not this host's".to_owned(),
            Test::NotTested(why) => not_tested(why, ""),
        },
    ));
    rows.push((
        "Mapping",
        shown(&report.mapping, "", |m| {
            format!("{} ({m}): {}", mapping_name(*m), mapping_words(*m))
        }),
    ));
    if report.mapped_test_ii.is_some() || report.mapped_test_iii.is_some() {
        let show = |a: Option<SocketAddr>| a.map_or("no answer".to_owned(), |a| a.to_string());
        rows.push((
            "",
            format!(
                "X2 {} (to the other IP), X3 {} (to the other IP and port)",
                show(report.mapped_test_ii),
                show(report.mapped_test_iii)
            ),
        ));
    }
    rows.push((
        "Filtering",
        shown(&report.filtering, "", |f| {
            format!("{} ({f}): {}", filtering_name(*f), filtering_words(*f))
        }),
    ));
    rows.push((
        "Port allocation",
        shown(&report.port_pattern, " (--samples 0)", |p| {
            port_pattern_words(*p)
        }),
    ));
    if !report.port_samples.is_empty() {
        let x1_ip = report.mapped.map(|a| a.ip());
        let samples: Vec<String> = report
            .port_samples
            .iter()
            .map(|s| {
                if Some(s.mapped.ip()) == x1_ip {
                    format!("{}->{}", s.local_port, s.mapped.port())
                } else {
                    format!("{}->{}", s.local_port, s.mapped)
                }
            })
            .collect();
        rows.push(("Port samples", samples.join(" ")));
    }
    rows.push((
        "Hairpinning",
        shown(&report.hairpinning, " (--no-hairpin)", |&h| {
            if h {
                "yes: hosts behind this NAT reach each other at their public addresses".to_owned()
            } else {
                "no: hosts behind this NAT cannot reach each other at their public addresses"
                    .to_owned()
            }
        }),
    ));
    rows.push((
        "Binding lifetime",
        shown(&report.lifetime, "; --lifetime SECS turns it on", |l| {
            lifetime_words(l)
        }),
    ));
    rows.push((
        "Classic name",
        format!("{} (RFC 3489)", report.classic_name),
    ));
    rows.push((
        "Server",
        match report.other_address {
            Some(other) => format!("{}, other address {other}", server_name(outcome)),
            None => format!("{}, no other address", server_name(outcome)),
        },
    ));
    let s = &report.stats;
    rows.push((
        "Requests",
        format!(
            "{} in {}: {}, {} timed out, {} answered only after a retry",
            count(s.requests, "request"),
            count(s.transactions, "transaction"),
            count(s.requests.saturating_sub(s.transactions), "retransmission"),
            s.timed_out,
            count(s.answered_after_retry, "test"),
        ),
    ));
    if s.timed_out > 0 && report.mapped.is_some() {
        // Filtering and hairpinning read silence as a finding (RFC 5780 §4.4, §3.4): their
        // timeouts are no loss, and a reader counting losses should not take them for one.
        rows.push((
            "",
            "(a test whose answer is silence, such as filtering or hairpinning behind a NAT, \
             ends in timeouts)"
                .to_owned(),
        ));
    }
    let ignored = s.late + s.unknown_transaction + s.wrong_source + s.wrong_local + s.malformed;
    if ignored + s.unexpected > 0 {
        rows.push((
            "",
            format!(
                "{} datagrams received, {} accepted, {} late, {} ignored (unknown, wrong \
                 source or port, malformed), {} unexpected",
                s.received,
                s.accepted,
                s.late,
                ignored - s.late,
                s.unexpected
            ),
        ));
    }
    rows.push((
        "Duration",
        format!("{:.2} s", report.duration.as_secs_f64()),
    ));

    let mut out = format!("NAT type: {}\n\n", headline(outcome));
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:<18}{value}");
    }
    let mut notes = Vec::new();
    if report.address_rewriting {
        notes.push(
            "a MAPPED-ADDRESS differed from its XOR-MAPPED-ADDRESS: something on the path (an \
             ALG) rewrites addresses inside packets (RFC 5780 §3.6)",
        );
    }
    if !report.is_complete() && report.mapped.is_some() {
        notes.push(
            "some tests that apply could not run; the NAT type assumes the most restrictive \
             behaviour for them (address-and-port-dependent, random ports, no hairpinning)",
        );
    }
    if !notes.is_empty() {
        out.push('\n');
        for note in notes {
            let _ = writeln!(out, "Note: {note}");
        }
    }
    out
}

/// The `--json` object. Field names are stable (see [`JSON_FORMAT`]).
pub(crate) fn json(outcome: &Outcome) -> Value {
    let report = &outcome.report;
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string());
    let s = &report.stats;
    json!({
        "format": JSON_FORMAT,
        "behaviour": behaviour_code(outcome),
        "summary": headline(outcome),
        "classic_name": report.classic_name,
        "complete": report.is_complete(),
        "udp": report.mapped.is_some(),
        "server": {
            "name": outcome.server_arg.to_string(),
            "address": report.server.to_string(),
            "other_address": addr(report.other_address),
        },
        "local_address": outcome.local.to_string(),
        "public_address": addr(report.mapped),
        "mapped_test_ii": addr(report.mapped_test_ii),
        "mapped_test_iii": addr(report.mapped_test_iii),
        "nat": test_json(&report.nat, |&nat| json!(nat)),
        "mapping": test_json(&report.mapping, |&m| json!(mapping_code(m))),
        "filtering": test_json(&report.filtering, |&f| json!(filtering_code(f))),
        "port_pattern": test_json(&report.port_pattern, |&p| port_pattern_json(p)),
        "port_samples": report.port_samples.iter().map(|s| json!({
            "local_port": s.local_port,
            "mapped": s.mapped.to_string(),
        })).collect::<Vec<_>>(),
        "hairpinning": test_json(&report.hairpinning, |&h| json!(h)),
        "lifetime": test_json(&report.lifetime, |l| json!({
            "idle_secs": l.idle.as_secs_f64(),
            "alive": l.alive,
        })),
        "effective": effective_json(report.behaviour),
        "address_rewriting": report.address_rewriting,
        "stats": {
            "transactions": s.transactions,
            "requests": s.requests,
            "retransmissions": s.requests.saturating_sub(s.transactions),
            "timed_out": s.timed_out,
            "answered_after_retry": s.answered_after_retry,
            "received": s.received,
            "accepted": s.accepted,
            "late": s.late,
            "unknown_transaction": s.unknown_transaction,
            "wrong_source": s.wrong_source,
            "wrong_local": s.wrong_local,
            "malformed": s.malformed,
            "unexpected": s.unexpected,
        },
        "icmp_errors": outcome.io.icmp_errors,
        "duration_secs": report.duration.as_secs_f64(),
    })
}

/// `behaviour` in the JSON: `open`, `firewall`, `nat`, `udp_blocked`, or `unknown` when test I
/// failed for another reason than silence.
fn behaviour_code(outcome: &Outcome) -> &'static str {
    if !outcome.found() {
        return "unknown";
    }
    match outcome.report.behaviour {
        Behaviour::Open => "open",
        Behaviour::Firewall { .. } => "firewall",
        Behaviour::Nat { .. } => "nat",
        Behaviour::UdpBlocked => "udp_blocked",
    }
}

/// The behaviour a punching strategy should plan with (measured, or the most restrictive where
/// a test could not run); `null` when there is nothing between the host and the server, or
/// nothing passes.
fn effective_json(behaviour: Behaviour) -> Value {
    match behaviour {
        Behaviour::Open | Behaviour::UdpBlocked => Value::Null,
        Behaviour::Firewall { filtering } => json!({
            "filtering": filtering_code(filtering),
        }),
        Behaviour::Nat {
            mapping,
            filtering,
            ports,
            hairpinning,
        } => json!({
            "mapping": mapping_code(mapping),
            "filtering": filtering_code(filtering),
            "port_pattern": port_pattern_json(ports),
            "hairpinning": hairpinning,
        }),
    }
}

/// `{"tested": true, "value": ...}` or `{"tested": false, "reason": code, "detail": text}`, with
/// `"error_code"` when the server refused.
fn test_json<T>(test: &Test<T>, value: impl Fn(&T) -> Value) -> Value {
    match test {
        Test::Tested(v) => json!({ "tested": true, "value": value(v) }),
        Test::NotTested(why) => {
            let mut object = json!({
                "tested": false,
                "reason": untested_code(*why),
                "detail": why.to_string(),
            });
            if let Untested::ServerRefused(code) = why {
                object["error_code"] = json!(code);
            }
            object
        }
    }
}

fn untested_code(why: Untested) -> &'static str {
    match why {
        Untested::Disabled => "disabled",
        Untested::UdpBlocked => "udp_blocked",
        Untested::NoNat => "no_nat",
        Untested::NoOtherAddress => "no_other_address",
        Untested::UnusableOtherAddress => "unusable_other_address",
        Untested::NoAnswer => "no_answer",
        Untested::ServerRefused(_) => "server_refused",
        Untested::TooFewSamples => "too_few_samples",
        Untested::Pending => "pending",
    }
}

fn mapping_code(m: Mapping) -> &'static str {
    match m {
        Mapping::EndpointIndependent => "endpoint_independent",
        Mapping::AddressDependent => "address_dependent",
        Mapping::AddressAndPortDependent => "address_and_port_dependent",
    }
}

fn filtering_code(f: Filtering) -> &'static str {
    match f {
        Filtering::EndpointIndependent => "endpoint_independent",
        Filtering::AddressDependent => "address_dependent",
        Filtering::AddressAndPortDependent => "address_and_port_dependent",
    }
}

fn port_pattern_json(p: PortPattern) -> Value {
    match p {
        PortPattern::Preserved => json!({ "kind": "preserved" }),
        PortPattern::Sequential { delta } => json!({ "kind": "sequential", "delta": delta }),
        PortPattern::Random => json!({ "kind": "random" }),
    }
}

fn udp_row(outcome: &Outcome) -> String {
    let report = &outcome.report;
    match (report.mapped, report.nat.untested()) {
        (Some(_), _) => "yes".to_owned(),
        (None, Some(Untested::UdpBlocked)) if outcome.io.icmp_errors > 0 => format!(
            "no: {} never answered, and the OS reported {} ICMP errors (port unreachable: no \
             STUN server listens there?)",
            report.server, outcome.io.icmp_errors
        ),
        (None, Some(Untested::UdpBlocked)) => format!(
            "no: {} never answered (UDP is blocked on the path, or no STUN server listens there)",
            report.server
        ),
        (None, Some(why)) => format!("unknown: {why}"),
        (None, None) => "unknown".to_owned(),
    }
}

/// "1 request", "2 requests".
fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `--server` as given, with the address it resolved to when that is not the same text.
pub(crate) fn server_name(outcome: &Outcome) -> String {
    let given = outcome.server_arg.to_string();
    let resolved = outcome.report.server.to_string();
    if given == resolved {
        given
    } else {
        format!("{given} ({resolved})")
    }
}

/// A test's finding through `words`, or "not tested: why" with `hint` after a `Disabled`.
fn shown<T>(test: &Test<T>, hint: &str, words: impl Fn(&T) -> String) -> String {
    match test {
        Test::Tested(v) => words(v),
        Test::NotTested(why) => not_tested(*why, hint),
    }
}

fn not_tested(why: Untested, hint: &str) -> String {
    match why {
        Untested::Disabled => format!("not tested: disabled{hint}"),
        Untested::ServerRefused(420) => {
            "not tested: the server does not support the request (420 Unknown Attribute)".to_owned()
        }
        why => format!("not tested: {why}"),
    }
}

fn mapping_name(m: Mapping) -> &'static str {
    match m {
        Mapping::EndpointIndependent => "endpoint-independent",
        Mapping::AddressDependent => "address-dependent",
        Mapping::AddressAndPortDependent => "address-and-port-dependent",
    }
}

fn mapping_words(m: Mapping) -> &'static str {
    match m {
        Mapping::EndpointIndependent => "one public address for every destination",
        Mapping::AddressDependent => "a new public address for each destination IP",
        Mapping::AddressAndPortDependent => "a new public address for each destination IP and port",
    }
}

fn filtering_name(f: Filtering) -> &'static str {
    match f {
        Filtering::EndpointIndependent => "endpoint-independent",
        Filtering::AddressDependent => "address-dependent",
        Filtering::AddressAndPortDependent => "address-and-port-dependent",
    }
}

fn filtering_words(f: Filtering) -> &'static str {
    match f {
        Filtering::EndpointIndependent => "anyone may send to the public address",
        Filtering::AddressDependent => "only IPs this host has sent to may send back",
        Filtering::AddressAndPortDependent => {
            "only the exact IP and port this host has sent to may send back"
        }
    }
}

fn port_pattern_short(p: PortPattern) -> String {
    match p {
        PortPattern::Preserved => "preserved".to_owned(),
        PortPattern::Sequential { delta } => format!("sequential {delta:+}"),
        PortPattern::Random => "random".to_owned(),
    }
}

fn port_pattern_words(p: PortPattern) -> String {
    match p {
        PortPattern::Preserved => "preserved: the public port is the local port".to_owned(),
        PortPattern::Sequential { delta } => format!(
            "sequential {delta:+}: each new binding gets the previous one's public port {delta:+}"
        ),
        PortPattern::Random => "random: no pattern, public ports cannot be predicted".to_owned(),
    }
}

fn lifetime_words(l: &Lifetime) -> String {
    if l.alive {
        format!(
            "at least {:.1} s: the binding was still there after that long idle",
            l.idle.as_secs_f64()
        )
    } else {
        format!(
            "under {:.1} s: the binding was gone after that long idle",
            l.idle.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fog_stun::discovery::{DiscoveryStats, PortSample, Report};

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// No NAT behind a two-address server, as on loopback.
    fn open() -> Outcome {
        Outcome {
            server_arg: "127.0.0.1".parse().unwrap(),
            local: addr("127.0.0.1:50000"),
            report: Report {
                behaviour: Behaviour::Open,
                classic_name: Behaviour::Open.classic_name(),
                server: addr("127.0.0.1:3478"),
                other_address: Some(addr("127.0.0.2:3479")),
                local: addr("0.0.0.0:50000"),
                mapped: Some(addr("127.0.0.1:50000")),
                mapped_test_ii: None,
                mapped_test_iii: None,
                nat: Test::Tested(false),
                mapping: Test::Tested(Mapping::EndpointIndependent),
                filtering: Test::Tested(Filtering::EndpointIndependent),
                port_pattern: Test::NotTested(Untested::NoNat),
                port_samples: Vec::new(),
                hairpinning: Test::NotTested(Untested::NoNat),
                lifetime: Test::NotTested(Untested::Disabled),
                address_rewriting: false,
                stats: DiscoveryStats {
                    transactions: 3,
                    requests: 3,
                    received: 3,
                    accepted: 3,
                    ..DiscoveryStats::default()
                },
                duration: Duration::from_millis(212),
            },
            io: fog_mio::Stats::default(),
        }
    }

    /// A home router: EIM, APDF, ports preserved, no hairpinning.
    fn home_router() -> Outcome {
        let behaviour = Behaviour::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressAndPortDependent,
            ports: PortPattern::Preserved,
            hairpinning: false,
        };
        let mut outcome = open();
        let r = &mut outcome.report;
        outcome.local = addr("192.168.1.10:50000");
        r.behaviour = behaviour;
        r.classic_name = behaviour.classic_name();
        r.mapped = Some(addr("203.0.113.5:50000"));
        r.mapped_test_ii = Some(addr("203.0.113.5:50000"));
        r.nat = Test::Tested(true);
        r.filtering = Test::Tested(Filtering::AddressAndPortDependent);
        r.port_pattern = Test::Tested(PortPattern::Preserved);
        r.port_samples = (50016..50018)
            .map(|p| PortSample {
                local_port: p,
                mapped: SocketAddr::new("203.0.113.5".parse().unwrap(), p),
            })
            .collect();
        r.hairpinning = Test::Tested(false);
        outcome
    }

    #[test]
    fn open_reads_no_nat_open() {
        let outcome = open();
        assert_eq!(headline(&outcome), "no NAT / open");
        let table = table(&outcome);
        assert!(table.starts_with("NAT type: no NAT / open\n"), "{table}");
        for line in [
            "  UDP               yes\n",
            "  Public address    127.0.0.1:50000 (X1, as the server sees us)\n",
            "  Mapping           endpoint-independent (EIM): one public address for every destination\n",
            "  Filtering         endpoint-independent (EIF): anyone may send to the public address\n",
            "  Port allocation   not tested: no NAT\n",
            "  Binding lifetime  not tested: disabled; --lifetime SECS turns it on\n",
            "  Classic name      open internet (RFC 3489)\n",
            "  Server            127.0.0.1:3478, other address 127.0.0.2:3479\n",
            "  Requests          3 requests in 3 transactions: 0 retransmissions, 0 timed out, 0 tests answered only after a retry\n",
        ] {
            assert!(table.contains(line), "no {line:?} in\n{table}");
        }
        assert!(!table.contains("Note:"), "{table}");

        let json = json(&outcome);
        assert_eq!(json["behaviour"], "open");
        assert_eq!(json["summary"], "no NAT / open");
        assert_eq!(json["public_address"], "127.0.0.1:50000");
        assert_eq!(
            json["mapping"],
            json!({"tested": true, "value": "endpoint_independent"})
        );
        assert_eq!(
            json["port_pattern"],
            json!({"tested": false, "reason": "no_nat", "detail": "no NAT"})
        );
        assert_eq!(json["effective"], Value::Null);
        assert_eq!(json["complete"], true);
    }

    #[test]
    fn a_nat_reads_its_classic_name_and_rfc_4787_terms() {
        let outcome = home_router();
        assert_eq!(
            headline(&outcome),
            "port-restricted cone (EIM + APDF, ports preserved)"
        );
        let table = table(&outcome);
        assert!(
            table.contains("  Port samples      50016->50016 50017->50017\n"),
            "{table}"
        );
        assert!(table.contains("X2 203.0.113.5:50000 (to the other IP), X3 no answer"));
        let json = json(&outcome);
        assert_eq!(json["behaviour"], "nat");
        assert_eq!(
            json["effective"],
            json!({
                "mapping": "endpoint_independent",
                "filtering": "address_and_port_dependent",
                "port_pattern": {"kind": "preserved"},
                "hairpinning": false,
            })
        );
    }

    #[test]
    fn untested_parts_are_said_and_assumed() {
        let mut outcome = home_router();
        let r = &mut outcome.report;
        r.other_address = None;
        r.mapping = Test::NotTested(Untested::NoOtherAddress);
        r.filtering = Test::NotTested(Untested::NoOtherAddress);
        r.behaviour = Behaviour::Nat {
            mapping: Mapping::AddressAndPortDependent,
            filtering: Filtering::AddressAndPortDependent,
            ports: PortPattern::Preserved,
            hairpinning: false,
        };
        r.classic_name = r.behaviour.classic_name();
        assert_eq!(
            headline(&outcome),
            "symmetric (APDM + APDF, ports preserved), assumed where untested"
        );
        let table = table(&outcome);
        assert!(
            table.contains("  Mapping           not tested: the server has only one address\n"),
            "{table}"
        );
        assert!(table.contains("Note: some tests that apply could not run"));
        assert_eq!(json(&outcome)["complete"], false);
        assert_eq!(json(&outcome)["mapping"]["reason"], "no_other_address");
    }

    #[test]
    fn udp_blocked_is_a_finding() {
        let mut outcome = open();
        let r = &mut outcome.report;
        r.behaviour = Behaviour::UdpBlocked;
        r.classic_name = r.behaviour.classic_name();
        r.mapped = None;
        r.other_address = None;
        r.mapping = Test::NotTested(Untested::UdpBlocked);
        r.nat = Test::NotTested(Untested::UdpBlocked);
        r.filtering = Test::NotTested(Untested::UdpBlocked);
        r.port_pattern = Test::NotTested(Untested::UdpBlocked);
        r.hairpinning = Test::NotTested(Untested::UdpBlocked);
        assert!(outcome.found());
        assert_eq!(headline(&outcome), "UDP blocked");
        let table = table(&outcome);
        assert!(table.contains("  UDP               no: 127.0.0.1:3478 never answered"));
        assert!(!table.contains("Public address"));
        let json = json(&outcome);
        assert_eq!(
            (&json["behaviour"], &json["udp"]),
            (&json!("udp_blocked"), &json!(false))
        );
        assert_eq!(json["public_address"], Value::Null);
    }

    #[test]
    fn a_refused_test_i_is_no_finding() {
        let mut outcome = open();
        let r = &mut outcome.report;
        r.mapped = None;
        r.nat = Test::NotTested(Untested::ServerRefused(401));
        r.behaviour = Behaviour::Nat {
            mapping: Mapping::AddressAndPortDependent,
            filtering: Filtering::AddressAndPortDependent,
            ports: PortPattern::Random,
            hairpinning: false,
        };
        assert!(!outcome.found());
        assert_eq!(
            headline(&outcome),
            "unknown (test I failed: the server refused with 401)"
        );
        let json = json(&outcome);
        assert_eq!(json["behaviour"], "unknown");
        assert_eq!(json["nat"]["error_code"], 401);
    }
}
