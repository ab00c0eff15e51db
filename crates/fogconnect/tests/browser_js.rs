//! `fogconnect.js` (fogd's browser client) and the Rust side agree byte for byte: the PeerId
//! text form both ways, the signaling auth transcript (fog-signal `msg::auth_transcript`), and
//! the offer and answer transcripts a node signs and verifies (`node::seal::transcript`),
//! including every candidate kind's spelling, a NAT behaviour's Debug form and the
//! fingerprints. And a WebCrypto Ed25519 signature over the JS offer transcript passes the
//! node's strict (RFC 8032) verification. Run under Node.js (the same WebCrypto API as the
//! browser's); a mismatch in any field fails here, without a browser.
//!
//! Skips with a message without `node`, fails without it when `FOG_REQUIRE_INTEROP=1`.

use std::path::Path;
use std::process::Command;

use fog_signal::msg::{
    CertFingerprint, Credentials, Description, ExchangeKey, Filtering, Mapping, NatBehaviour,
    Nonce, PortPattern, Seal, SessionId, Sig, Transport, auth_transcript,
};
use fog_signal::{KeyPair, PeerId};
use fogconnect::node::seal::{Role, transcript};

const SCRIPT: &str = r#"
const m = await import(process.env.FOG_JS);
const input = JSON.parse(process.env.FOG_INPUT);
const unhex = (s) => m.unhex(s);
const out = {};
out.browser_id = m.peerIdText(unhex(input.browser_key));
out.node_key = m.hex(m.parsePeerId(input.node_id_sloppy));
out.auth = m.hex(m.authTranscript(input.realm, unhex(input.server_key), unhex(input.client_nonce),
  unhex(input.server_nonce), unhex(input.browser_key), input.alias));
out.offer = m.hex(m.descriptionTranscript(
  { from: unhex(input.browser_key), to: unhex(input.node_key) }, input.offer));
out.answer = m.hex(m.descriptionTranscript(
  { from: unhex(input.node_key), to: unhex(input.browser_key), session: unhex(input.session),
    offerKey: unhex(input.offer.seal.key) }, input.answer));
const id = await m.Identity.generate();
out.signer = m.hex(id.publicKey);
out.signer_id = id.peerId;
const signed = { ...input.offer };
out.signed_offer = m.hex(m.descriptionTranscript({ from: id.publicKey, to: unhex(input.node_key) }, signed));
out.signature = m.hex(await id.sign(m.descriptionTranscript({ from: id.publicKey, to: unhex(input.node_key) }, signed)));
const sdp = m.toRemoteSdp(input.answer, "0");
out.sdp_ok = sdp.includes("a=setup:passive\r\n") && sdp.includes("a=ice-pwd:" + input.answer.credentials.pwd)
  && sdp.includes("typ host") && sdp.includes("2001:db8::1 4002 typ host");
// The answer the node signed (Rust), checked as `dial` checks it, then altered ways.
const ctx = { peerKey: unhex(input.node_key), me: unhex(input.browser_key), session: input.session,
  offerKey: unhex(input.offer.seal.key) };
const frame = { type: "answer", session: input.session, from: input.node_id, description: input.signed_answer };
const alter = (f) => { const c = JSON.parse(JSON.stringify(frame)); f(c); return c; };
out.verify = [
  await m.verifyAnswer(frame, ctx),
  await m.verifyAnswer(alter((c) => { c.description.candidates[0].addr = "192.0.2.66:4000"; }), ctx),
  await m.verifyAnswer(alter((c) => { c.description.rtc = "aa".repeat(32); }), ctx),
  await m.verifyAnswer(alter((c) => { c.description.credentials.ufrag = "other"; }), ctx),
  await m.verifyAnswer(frame, { ...ctx, session: "07".repeat(16) }),
  await m.verifyAnswer(frame, { ...ctx, offerKey: new Uint8Array(32) }),
  await m.verifyAnswer(alter((c) => { c.from = input.browser_id; }), ctx),
  await m.verifyAnswer(frame, { ...ctx, peerKey: unhex(input.browser_key) }),
  await m.verifyAnswer(alter((c) => { c.description.transports = ["rtc"]; }), ctx),
];
out.candidates = m.candidatesOf(input.sdp);
console.log(JSON.stringify(out));
"#;

/// Runs `script` as an ES module under Node.js, with `FOG_JS` naming `fogconnect.js` and
/// `env` besides; the JSON it prints.
fn run_module(node: &Path, script: &str, env: &[(&str, String)]) -> serde_json::Value {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fogd/web/fogconnect.js");
    let output = Command::new(node)
        .args(["--input-type=module", "-e", script])
        .env("FOG_JS", &js)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running node");
    assert!(
        output.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script's JSON")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn candidate(json: &str) -> fog_signal::msg::Candidate {
    serde_json::from_str(json).unwrap()
}

#[test]
fn the_javascript_client_writes_every_transcript_as_the_node_does() {
    let Some(node_exe) = fog_test_support::find_tool("node") else {
        fog_test_support::skip_or_fail(
            "the_javascript_client_writes_every_transcript_as_the_node_does",
            "node (Node.js) is not installed",
            "FOG_REQUIRE_INTEROP",
        );
        return;
    };
    let browser = KeyPair::from_seed(&[1; 32]).peer_id();
    let node = KeyPair::from_seed(&[2; 32]).peer_id();
    let server = KeyPair::from_seed(&[3; 32]).peer_id();
    let (client_nonce, server_nonce) = (Nonce([4; 32]), Nonce([5; 32]));
    let session = SessionId([6; 16]);
    let offer = Description {
        candidates: vec![],
        nat: None,
        transports: vec![Transport::Browser],
        credentials: Credentials {
            ufrag: "aB3+".into(),
            pwd: "0123456789abcdefghijklmn".into(),
        },
        service: 7,
        seal: Some(Seal {
            key: ExchangeKey([7; 32]),
            signature: Sig([0; 64]),
        }),
        quic: None,
        rtc: Some(CertFingerprint([8; 32])),
    };
    let answer = Description {
        candidates: vec![
            candidate(r#"{"kind":"host","addr":"127.0.0.1:4000","priority":2130706431}"#),
            candidate(
                r#"{"kind":"srflx","addr":"203.0.113.7:61000","priority":1694498815,"related":"192.168.1.20:4000"}"#,
            ),
            candidate(r#"{"kind":"mapped","addr":"198.51.100.9:4001","priority":1}"#),
            candidate(r#"{"kind":"host","addr":"[2001:db8::1]:4002","priority":4000000000}"#),
        ],
        nat: Some(NatBehaviour::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressAndPortDependent,
            ports: PortPattern::Sequential { delta: -2 },
            hairpinning: false,
        }),
        transports: vec![Transport::Browser],
        credentials: Credentials {
            ufrag: "nodeufrag".into(),
            pwd: "node-password-of-24-chars".into(),
        },
        service: 7,
        seal: Some(Seal {
            key: ExchangeKey([9; 32]),
            signature: Sig([0; 64]),
        }),
        quic: Some(CertFingerprint([10; 32])),
        rtc: Some(CertFingerprint([11; 32])),
    };
    // How a person might type the node's id: lowercase, dashes, O for 0, l for 1.
    let sloppy: String = node
        .to_string()
        .to_lowercase()
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let c = match c {
                '0' => 'o',
                '1' => 'l',
                c => c,
            };
            if i % 6 == 5 { vec![c, '-'] } else { vec![c] }
        })
        .collect();
    // The answer as the node signs it (`Node::answer_browser`).
    let mut signed_answer = answer.clone();
    let answer_transcript = transcript(
        &Role::Answer {
            from: node,
            to: browser,
            session,
            offer_key: &ExchangeKey([7; 32]),
        },
        &answer,
        &ExchangeKey([9; 32]),
    );
    signed_answer.seal = Some(Seal {
        key: ExchangeKey([9; 32]),
        signature: Sig(KeyPair::from_seed(&[2; 32]).sign(&answer_transcript)),
    });
    let input = serde_json::json!({
        "signed_answer": signed_answer,
        "sdp": "a=candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0\r\n\
                a=candidate:2 1 udp 2122260223 0b3e1a4c-1f2d.local 50000 typ host\r\n\
                a=candidate:3 1 UDP 1686052607 203.0.113.9 6000 typ srflx raddr 192.168.1.5 rport 54321\r\n\
                a=candidate:4 1 udp 2122262783 2001:0DB8:0:0:0:0:0:5 7 typ host\r\n\
                a=candidate:5 1 udp 1 2001:db8:0:1:0:0:0:0 8 typ relay raddr 0.0.0.0 rport 0\r\n\
                a=candidate:6 2 udp 1 1.2.3.4 7 typ host\r\n\
                a=candidate:7 1 tcp 1 1.2.3.4 9 typ host tcptype active\r\n\
                a=candidate:8 1 udp 1 fe80::1%eth0 9 typ host\r\n",
        "node_id": node.to_string(),
        "browser_id": browser.to_string(),
        "browser_key": hex(browser.as_bytes()),
        "node_key": hex(node.as_bytes()),
        "node_id_sloppy": sloppy,
        "server_key": hex(server.as_bytes()),
        "client_nonce": hex(&client_nonce.0),
        "server_nonce": hex(&server_nonce.0),
        "realm": "signal.example.org",
        "alias": "printer-7",
        "session": hex(&session.0),
        "offer": offer,
        "answer": answer,
    });
    let out = run_module(&node_exe, SCRIPT, &[("FOG_INPUT", input.to_string())]);
    let field = |name: &str| out[name].as_str().unwrap_or_default().to_owned();

    assert_eq!(field("browser_id"), browser.to_string());
    assert_eq!(field("node_key"), hex(node.as_bytes()));
    let auth = auth_transcript(
        "signal.example.org",
        &server,
        &client_nonce,
        &server_nonce,
        &browser,
        Some("printer-7"),
    );
    assert_eq!(field("auth"), hex(&auth));
    let offer_role = Role::Offer {
        from: browser,
        to: node,
    };
    assert_eq!(
        field("offer"),
        hex(&transcript(&offer_role, &offer, &ExchangeKey([7; 32])))
    );
    let offer_key = ExchangeKey([7; 32]);
    let answer_role = Role::Answer {
        from: node,
        to: browser,
        session,
        offer_key: &offer_key,
    };
    assert_eq!(
        field("answer"),
        hex(&transcript(&answer_role, &answer, &ExchangeKey([9; 32])))
    );

    // WebCrypto's signature passes the node's strict verification of the offer it would get.
    let signer_bytes: [u8; 32] = unhex(&field("signer")).try_into().unwrap();
    let signer = PeerId::from_bytes(signer_bytes);
    assert_eq!(field("signer_id"), signer.to_string());
    let role = Role::Offer {
        from: signer,
        to: node,
    };
    let expected = transcript(&role, &offer, &ExchangeKey([7; 32]));
    assert_eq!(field("signed_offer"), hex(&expected));
    let signature: [u8; 64] = unhex(&field("signature")).try_into().unwrap();
    assert!(signer.verify(&expected, &signature));
    let mut tampered = expected.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(!signer.verify(&tampered, &signature));
    assert_eq!(out["sdp_ok"], serde_json::Value::Bool(true));
    // The browser's candidates, written as the node re-writes what it parses (else the
    // node's transcript would differ and it would drop the offer).
    let candidates: Vec<fog_signal::msg::Candidate> =
        serde_json::from_value(out["candidates"].clone()).expect("candidates the node parses");
    let written: Vec<String> = candidates.iter().map(|c| c.addr.to_string()).collect();
    assert_eq!(
        written,
        [
            "192.168.1.5:54321",
            "203.0.113.9:6000",
            "[2001:db8::5]:7",
            "[2001:db8:0:1::]:8"
        ]
    );
    for (c, js) in candidates.iter().zip(out["candidates"].as_array().unwrap()) {
        assert_eq!(js["addr"].as_str().unwrap(), c.addr.to_string());
        if let Some(related) = c.related {
            assert_eq!(js["related"].as_str().unwrap(), related.to_string());
        }
    }
    // Only the genuine answer passes: not one with a candidate, the fingerprint or the ufrag
    // changed, nor for another session or offer, nor from or signed by anyone else, nor for
    // another transport.
    assert_eq!(
        out["verify"],
        serde_json::json!([true, false, false, false, false, false, false, false, false])
    );
}

/// `dial` against a scripted server (a stand-in `WebSocket`) and browser (`RTCPeerConnection`)
/// that refuses the offer with the frame `FOG_REFUSAL` (fog-signal's own error frame; its `id`
/// is set to the offer's): the dial rejects with the server's code and name, and the peer
/// connection made for the offer is closed.
const REFUSAL_SCRIPT: &str = r#"
const m = await import(process.env.FOG_JS);
const refusal = JSON.parse(process.env.FOG_REFUSAL);
const server = await m.Identity.generate();
const node = await m.Identity.generate();
const sdp = "v=0\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijklmn\r\n" +
  "a=fingerprint:sha-256 " + Array(32).fill("AB").join(":") + "\r\n";
const pcs = [];
globalThis.RTCPeerConnection = class {
  constructor() { this.closed = false; this.iceGatheringState = "complete"; pcs.push(this); }
  createDataChannel() { return {}; }
  async createOffer() { return { type: "offer", sdp }; }
  async setLocalDescription(d) { this.localDescription = d; }
  addEventListener() {}
  close() { this.closed = true; }
};
globalThis.WebSocket = class {
  static OPEN = 1;
  constructor() { this.readyState = 1; setTimeout(() => this.onopen(), 0); }
  reply(frame) { setTimeout(() => this.onmessage({ data: JSON.stringify(frame) }), 0); }
  send(text) {
    const f = JSON.parse(text);
    if (f.type === "hello") this.reply({ type: "challenge", server: server.peerId, nonce: "11".repeat(32) });
    else if (f.type === "auth") this.reply({ type: "welcome", peer: f.peer });
    else if (f.type === "lookup") this.reply({ type: "lookup_result", id: f.id, peer: node.peerId, online: true });
    else if (f.type === "offer") this.reply({ ...refusal, id: f.id });
  }
  close() {}
};
const me = await m.Identity.generate();
const s = await m.Signal.open("ws://signal.test/ws", me);
const out = { pcs: 0 };
try {
  await s.dial(node.peerId, { gatherMs: 10, timeoutMs: 2000 });
  out.result = "dialled";
} catch (e) {
  out.result = "rejected";
  out.fog = e instanceof m.FogError;
  out.code = e.code ?? null;
  out.kind = e.kind ?? null;
  out.message = e.message;
}
out.pcs = pcs.length;
out.closed = pcs.every((p) => p.closed);
console.log(JSON.stringify(out));
process.exit(0);
"#;

#[test]
fn a_refused_offer_rejects_with_the_servers_code_and_closes_its_peer_connection() {
    let name = "a_refused_offer_rejects_with_the_servers_code_and_closes_its_peer_connection";
    let Some(node_exe) = fog_test_support::find_tool("node") else {
        fog_test_support::skip_or_fail(
            name,
            "node (Node.js) is not installed",
            "FOG_REQUIRE_INTEROP",
        );
        return;
    };
    let refusal = fog_signal::msg::ServerMsg::error(
        fog_signal::msg::ErrorCode::TooManySessions,
        Some(0),
        "the peer takes part in 4096 sessions already",
    );
    let out = run_module(
        &node_exe,
        REFUSAL_SCRIPT,
        &[("FOG_REFUSAL", serde_json::to_string(&refusal).unwrap())],
    );
    assert_eq!(out["result"], "rejected", "{out}");
    assert_eq!(out["fog"], true, "{out}");
    assert_eq!(out["code"], 3005, "{out}");
    assert_eq!(out["kind"], "too_many_sessions", "{out}");
    assert_eq!(out["pcs"], 1, "{out}");
    assert_eq!(
        out["closed"], true,
        "the offer's peer connection stays open: {out}"
    );
}
