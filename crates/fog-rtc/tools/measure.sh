#!/usr/bin/env bash
# Build time and release-binary size of the two WebRTC data-channel stacks docs/rtc.md weighs:
# str0m's `Rtc` whole, and dimpl (DTLS) + sctp-proto (SCTP) under our own agent. Each variant is
# a tiny binary in a throwaway project outside the workspace (own target dir, clean build, the
# same release profile), so only the stack's own cost shows. Usage: tools/measure.sh [OUTDIR]
# (default: a temp dir, removed at the end). Prints one line per variant.
set -euo pipefail
out=${1:-$(mktemp -d)}
keep=${1:+yes}
mkdir -p "$out"
export CARGO_INCREMENTAL=0

variant() { # name, dependencies (TOML lines), main.rs
    local dir="$out/$1"
    mkdir -p "$dir/src"
    printf '[package]\nname = "%s"\nversion = "0.0.0"\nedition = "2024"\n[dependencies]\n%s\n[profile.release]\nstrip = "symbols"\n' "$1" "$2" >"$dir/Cargo.toml"
    printf '%s\n' "$3" >"$dir/src/main.rs"
    (cd "$dir" && cargo fetch -q)
    local start end
    start=$(date +%s.%N)
    (cd "$dir" && cargo build -q --release --target-dir "$dir/target")
    end=$(date +%s.%N)
    local size
    size=$(stat -c %s "$dir/target/release/$1")
    printf '%-12s build %6.1f s  stripped binary %9d bytes\n' "$1" "$(echo "$end - $start" | bc)" "$size"
}

variant baseline '' '
fn main() {
    println!("{}", std::env::args().count());
}'

variant str0m 'str0m = { version = "=0.25.0", default-features = false, features = ["aws-lc-rs"] }' '
use std::time::Instant;
fn main() {
    // An offerer with one data channel: ICE, DTLS, SCTP, DCEP and SDP are all reachable.
    let mut rtc = str0m::Rtc::new(Instant::now());
    let addr = "127.0.0.1:5000".parse().unwrap();
    rtc.add_local_candidate(str0m::Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_channel(std::env::args().count().to_string());
    let (offer, _pending) = api.apply().unwrap();
    println!("{}", offer.to_sdp_string());
    loop {
        match rtc.poll_output().unwrap() {
            str0m::Output::Timeout(_) => break,
            other => println!("{other:?}"),
        }
    }
}'

variant dimpl-sctp 'dimpl = "=0.9.0"
sctp-proto = "=0.10.8"
bytes = "1"' '
use std::sync::Arc;
use std::time::Instant;
fn main() {
    // A DTLS client and an SCTP association: the two machines a data channel needs, without
    // ICE, DCEP or SDP (which this variant would still have to write).
    let cert = dimpl::certificate::generate_self_signed_certificate().unwrap();
    let mut dtls = dimpl::Dtls::new_auto(Arc::new(dimpl::Config::default()), cert, Instant::now());
    dtls.set_active(true);
    let input: Vec<u8> = std::env::args().flat_map(|a| a.into_bytes()).collect();
    let _ = dtls.handle_packet(&input);
    let mut buf = vec![0u8; 2048];
    if let dimpl::Output::Packet(p) = dtls.poll_output(&mut buf) {
        println!("{}", p.len());
    }
    let mut ep = sctp_proto::Endpoint::new(Arc::new(sctp_proto::EndpointConfig::default()), Some(Arc::new(sctp_proto::ServerConfig::default())));
    let remote = "127.0.0.1:5000".parse().unwrap();
    let r = ep.handle(Instant::now(), remote, None, None, bytes::Bytes::from(input));
    println!("{}", r.is_some());
    let (_h, mut assoc) = ep.connect(sctp_proto::ClientConfig::default(), remote).unwrap();
    while let Some(t) = assoc.poll_transmit(Instant::now()) {
        println!("{t:?}");
    }
}'

[ -n "$keep" ] || rm -rf "$out"
