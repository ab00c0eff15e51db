// fogconnect.js: a web page dials a FogConnect node by peer ID or alias.
//
// No build step, no dependency: an ES module for current browsers (WebCrypto Ed25519,
// RTCPeerConnection). What it does, and why it is safe to let the signaling server carry it,
// is in docs/browser.md. In short:
//
//   1. The page holds an Ed25519 identity (WebCrypto); its PeerId is written exactly as
//      fog-signal writes it (crates/fog-signal/src/identity.rs).
//   2. It speaks fog-signal over fogd's WebSocket (docs/signaling.md): hello, challenge, auth
//      (the auth transcript of fog-signal's msg.rs, byte for byte), then lookup and offer.
//   3. Its offer is our JSON description, not SDP: transport "browser", its ICE ufrag/pwd and
//      its DTLS certificate's fingerprint taken from RTCPeerConnection's own offer, signed
//      with the page's key over the node's offer transcript (fogconnect's seal.rs).
//   4. The node's answer is verified against the peer ID that was dialled, over the answer
//      transcript (which names this offer's key and the session), before it becomes SDP for
//      setRemoteDescription. So the server can deliver or drop, never alter or impersonate.
//
//   import { Identity, Signal } from "/fogconnect.js";
//   const sig = await Signal.open("ws://host:7600/ws", await Identity.generate());
//   const conn = await sig.dial("printer-7");   // { channel, peer, session, pc }
//   conn.channel.send("hello");

const enc = new TextEncoder();

// ---- bytes -----------------------------------------------------------------------------

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function unhex(text, length) {
  if (typeof text !== "string" || !/^([0-9a-fA-F]{2})*$/.test(text)) return null;
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
  return length === undefined || out.length === length ? out : null;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u32(n) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

function u16(n) {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, n);
  return b;
}

function random(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

// A transcript: every field as a 4-byte big-endian length and the bytes (seal.rs `put`).
class Transcript {
  constructor(prefix) {
    this.parts = prefix ? [prefix] : [];
  }
  put(bytes) {
    if (typeof bytes === "string") bytes = enc.encode(bytes);
    this.parts.push(u32(bytes.length), bytes);
    return this;
  }
  bytes() {
    return concat(this.parts);
  }
}

// ---- peer ids (fog-signal identity.rs) -----------------------------------------------------

const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CHECK_PRIME = 1021;

function checksum(symbols) {
  return symbols.reduce((r, v) => (r * 32 + v) % CHECK_PRIME, 0);
}

// The 54-symbol text of a 32-byte Ed25519 public key: the key shifted left 4 bits in 52
// Crockford base32 symbols, then the 52-symbol number modulo 1021 in two symbols.
export function peerIdText(key) {
  const symbols = [];
  let acc = 0;
  let bits = 0;
  for (const b of key) {
    acc = ((acc << 8) | b) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      symbols.push((acc >> bits) & 31);
    }
  }
  symbols.push((acc << (5 - bits)) & 31);
  const check = checksum(symbols);
  symbols.push(check >> 5, check & 31);
  return symbols.map((v) => ALPHABET[v]).join("");
}

// The key of a peer id's text (any spelling fog-signal accepts), or null.
export function parsePeerId(text) {
  const clean = String(text)
    .toUpperCase()
    .replace(/[-\s]/g, "")
    .replace(/[IL]/g, "1")
    .replace(/O/g, "0");
  if (clean.length !== 54) return null;
  const v = Array.from(clean, (c) => ALPHABET.indexOf(c));
  if (v.some((x) => x < 0)) return null;
  if (checksum(v.slice(0, 52)) !== v[52] * 32 + v[53]) return null;
  const key = new Uint8Array(32);
  let acc = 0;
  let bits = 0;
  let n = 0;
  for (const x of v.slice(0, 52)) {
    acc = ((acc << 5) | x) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      key[n++] = (acc >> bits) & 255;
    }
  }
  // The four padding bits must be zero.
  return (acc & ((1 << bits) - 1)) === 0 ? key : null;
}

// ---- identity -------------------------------------------------------------------------------

const ED25519 = { name: "Ed25519" };

export class Identity {
  constructor(keys, publicKey) {
    this.keys = keys;
    this.publicKey = publicKey; // 32 bytes
    this.peerId = peerIdText(publicKey);
  }

  static async generate() {
    // Not extractable: the private key never leaves WebCrypto (it can still be stored in
    // IndexedDB, see `persistent`).
    const keys = await crypto.subtle.generateKey(ED25519, false, ["sign", "verify"]);
    return Identity.from(keys);
  }

  static async from(keys) {
    const raw = new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey));
    return new Identity(keys, raw);
  }

  // The identity kept in this origin's IndexedDB under `name`, made on first use.
  static async persistent(name = "default") {
    const db = await new Promise((ok, fail) => {
      const r = indexedDB.open("fogconnect", 1);
      r.onupgradeneeded = () => r.result.createObjectStore("identities");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
    });
    const call = (mode, f) =>
      new Promise((ok, fail) => {
        const r = f(db.transaction("identities", mode).objectStore("identities"));
        r.onsuccess = () => ok(r.result);
        r.onerror = () => fail(r.error);
      });
    let keys = await call("readonly", (s) => s.get(name));
    if (!keys) {
      keys = await crypto.subtle.generateKey(ED25519, false, ["sign", "verify"]);
      await call("readwrite", (s) => s.put(keys, name));
    }
    return Identity.from(keys);
  }

  async sign(bytes) {
    return new Uint8Array(await crypto.subtle.sign(ED25519, this.keys.privateKey, bytes));
  }
}

async function verify(publicKey, bytes, signature) {
  try {
    const key = await crypto.subtle.importKey("raw", publicKey, ED25519, false, ["verify"]);
    return await crypto.subtle.verify(ED25519, key, signature, bytes);
  } catch {
    return false;
  }
}

// ---- transcripts (fog-signal msg.rs, fogconnect seal.rs) ----------------------------------

// msg.rs `auth_transcript`: the domain label unprefixed, then six length-prefixed fields.
export function authTranscript(realm, server, clientNonce, serverNonce, peer, alias) {
  return new Transcript(enc.encode("fogconnect-signal-auth-v1\0"))
    .put(realm)
    .put(server)
    .put(clientNonce)
    .put(serverNonce)
    .put(peer)
    .put(alias || "")
    .bytes();
}

// What seal.rs `transcript` writes for a NAT behaviour: Rust's Debug form of the JSON object.
function natDebug(nat) {
  if (!nat) return "";
  const words = (s) => s.replace(/(^|_)([a-z])/g, (_, __, c) => c.toUpperCase());
  switch (nat.kind) {
    case "open":
      return "Open";
    case "udp_blocked":
      return "UdpBlocked";
    case "firewall":
      return `Firewall { filtering: ${words(nat.filtering)} }`;
    case "nat": {
      const p = nat.ports;
      const ports = p.kind === "sequential" ? `Sequential { delta: ${p.delta} }` : words(p.kind);
      return (
        `Nat { mapping: ${words(nat.mapping)}, filtering: ${words(nat.filtering)}, ` +
        `ports: ${ports}, hairpinning: ${nat.hairpinning} }`
      );
    }
    default:
      return null; // unknown: cannot be verified
  }
}

// Rust's Debug names of the transports (seal.rs writes `{transport:?}`).
const TRANSPORT_DEBUG = {
  datagram: "Datagram",
  kcp: "Kcp",
  utp: "Utp",
  quic: "Quic",
  sctp: "Sctp",
  rtc: "Rtc",
  browser: "Browser",
};

// seal.rs `transcript`: role fields, then the description, then the exchange key.
export function descriptionTranscript(role, d) {
  const t = new Transcript();
  if (role.session) {
    t.put("fogconnect-answer-v1").put(role.from).put(role.to).put(role.session).put(role.offerKey);
  } else {
    t.put("fogconnect-offer-v1").put(role.from).put(role.to);
  }
  t.put(u16(d.service)).put(d.credentials.ufrag).put(u32(d.candidates.length));
  for (const c of d.candidates) {
    t.put(c.kind).put(c.addr).put(u32(c.priority)).put(c.related || "");
  }
  const nat = natDebug(d.nat);
  if (nat === null) return null;
  t.put(nat).put(u32(d.transports.length));
  for (const name of d.transports) {
    if (!(name in TRANSPORT_DEBUG)) return null;
    t.put(TRANSPORT_DEBUG[name]);
  }
  if (d.quic) t.put("quic-certificate").put(unhex(d.quic, 32));
  if (d.rtc) t.put("rtc-certificate").put(unhex(d.rtc, 32));
  return t.put(unhex(d.seal.key, 32)).bytes();
}

// Whether `answer` (the server's `answer` frame) is the node `peerKey`'s answer to our offer
// (`me`, `offerKey`) in `session`, for a browser: its signature over the answer transcript
// verifies, it names transport "browser", and it carries a fingerprint and an ICE password.
export async function verifyAnswer(answer, { peerKey, me, session, offerKey }) {
  const a = answer && answer.description;
  if (!a || !a.seal || !a.credentials || !Array.isArray(a.candidates) || !Array.isArray(a.transports)) {
    return false;
  }
  const sessionBytes = unhex(session, 16);
  const signature = unhex(a.seal.signature, 64);
  if (!sessionBytes || !signature || !unhex(a.seal.key, 32) || !unhex(a.rtc, 32)) return false;
  if (answer.from !== peerIdText(peerKey) || a.transports[0] !== "browser" || !a.credentials.pwd) {
    return false;
  }
  const transcript = descriptionTranscript({ from: peerKey, to: me, session: sessionBytes, offerKey }, a);
  return transcript !== null && (await verify(peerKey, transcript, signature));
}

// ---- SDP: our description <-> what RTCPeerConnection speaks -------------------------------

// ICE credentials, DTLS fingerprint and mid from the browser's own offer.
export function fromLocalSdp(sdp) {
  const get = (re) => (sdp.match(re) || [])[1];
  const fingerprint = get(/^a=fingerprint:sha-256 ([0-9A-Fa-f:]+)\r?$/m);
  return {
    ufrag: get(/^a=ice-ufrag:(\S+)\r?$/m),
    pwd: get(/^a=ice-pwd:(\S+)\r?$/m),
    fingerprint: fingerprint && fingerprint.replace(/:/g, "").toLowerCase(),
    mid: get(/^a=mid:(\S+)\r?$/m) || "0",
    candidates: candidatesOf(sdp),
  };
}

// The browser's UDP candidates of component 1 as our description's (RFC 8839 §5.1 grammar):
// IP literals only (an mDNS `.local` name is no address for the node), at most 8.
export function candidatesOf(sdp) {
  const kinds = { host: "host", srflx: "srflx", prflx: "prflx", relay: "relay" };
  const out = [];
  for (const m of sdp.matchAll(/^a=candidate:\S+ 1 udp (\d+) (\S+) (\d+) typ (\w+)(.*?)\r?$/gim)) {
    const [, priority, ip, port, typ, rest] = m;
    const addr = socketAddr(ip, port);
    if (!(typ in kinds) || !addr || Number(priority) > 0xffffffff) continue;
    const c = { kind: kinds[typ], addr, priority: Number(priority) };
    const rel = /raddr (\S+) rport (\d+)/.exec(rest);
    const related = rel && typ !== "host" && socketAddr(rel[1], rel[2]);
    if (related) c.related = related;
    out.push(c);
    if (out.length === 8) break;
  }
  return out;
}

// "ip:port" / "[ipv6]:port" exactly as Rust's SocketAddr writes it (the node re-writes the
// address it parsed into the transcript it verifies): IPv6 compressed and lowercase (RFC 5952,
// which the URL parser's serialisation follows); no zone, no embedded IPv4, no leading zeros.
function socketAddr(ip, port) {
  if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) return null;
  if (!ip.includes(":")) {
    const ok = /^(0|[1-9]\d{0,2})(\.(0|[1-9]\d{0,2})){3}$/.test(ip) && ip.split(".").every((o) => Number(o) < 256);
    return ok ? `${ip}:${Number(port)}` : null;
  }
  if (ip.includes(".") || ip.includes("%")) return null;
  try {
    return `${new URL(`http://[${ip}]/`).hostname}:${Number(port)}`;
  } catch {
    return null;
  }
}

// "ip:port" or "[ipv6]:port" as SDP's address and port.
function splitAddr(addr) {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(addr) || /^([^:]+):(\d+)$/.exec(addr);
  return m ? [m[1], m[2]] : null;
}

// The node's verified answer as the SDP answer to the browser's offer (RFC 8866, RFC 8841):
// the node is the DTLS server (`a=setup:passive`, never `actpass` in an answer, RFC 8842 §5),
// its candidates are its host and server-reflexive addresses.
export function toRemoteSdp(d, mid) {
  const fp = d.rtc.toUpperCase().match(/../g).join(":");
  const lines = [
    "v=0",
    `o=- ${Date.now()} 2 IN IP4 127.0.0.1`,
    "s=-",
    "t=0 0",
    `a=group:BUNDLE ${mid}`,
    "a=msid-semantic: WMS",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 0.0.0.0",
    `a=mid:${mid}`,
    `a=ice-ufrag:${d.credentials.ufrag}`,
    `a=ice-pwd:${d.credentials.pwd}`,
    `a=fingerprint:sha-256 ${fp}`,
    "a=setup:passive",
    "a=sctp-port:5000",
    // The node takes messages up to 64 KiB (fogconnect node/rtc.rs MAX_MESSAGE).
    "a=max-message-size:65536",
  ];
  d.candidates.forEach((c, i) => {
    const at = splitAddr(c.addr);
    if (!at) return;
    if (c.kind === "host") {
      lines.push(`a=candidate:${i + 1} 1 udp ${c.priority} ${at[0]} ${at[1]} typ host`);
    } else if (c.kind === "srflx" || c.kind === "mapped") {
      const rel = (c.related && splitAddr(c.related)) || ["0.0.0.0", "0"];
      lines.push(
        `a=candidate:${i + 1} 1 udp ${c.priority} ${at[0]} ${at[1]} typ srflx raddr ${rel[0]} rport ${rel[1]}`,
      );
    }
  });
  lines.push("a=end-of-candidates");
  return lines.join("\r\n") + "\r\n";
}

// ---- signaling -------------------------------------------------------------------------------

// `code` and `kind` are set when the signaling server refused a request: its stable numeric
// code and its name (fog-signal's error codes, e.g. 3005 "too_many_sessions" when a peer of
// the offer already takes part in the most sessions the server allows; 4001 "unknown_peer").
export class FogError extends Error {
  constructor(message, { code, kind } = {}) {
    super(message);
    if (code !== undefined) this.code = code;
    if (kind !== undefined) this.kind = kind;
  }
}

export class Signal {
  // Opens fog-signal on `url` (ws:// or wss://, path /ws) as `identity`. `realm` is the host
  // name signed into the auth transcript: the one dialled, as fog-runtime signs it.
  static async open(url, identity, { realm, alias } = {}) {
    const s = new Signal(url, identity);
    const host = new URL(url).hostname;
    await s.handshake(realm || host.replace(/^\[|\]$/g, ""), alias);
    return s;
  }

  constructor(url, identity) {
    this.identity = identity;
    this.ws = new WebSocket(url);
    this.nextId = 1;
    this.waiters = []; // [predicate, resolve, reject]
    this.sessions = new Map(); // session hex -> handler
    this.log = () => {}; // set it to see what a dial does
    this.closed = new Promise((resolve) => {
      this.ws.onclose = (e) => {
        const err = new FogError(`signaling closed (${e.code} ${e.reason})`);
        for (const [, , reject] of this.waiters.splice(0)) reject(err);
        for (const h of this.sessions.values()) h({ type: "session_closed", reason: "signaling lost" });
        resolve(e);
      };
    });
    this.ws.onmessage = (e) => this.frame(e.data);
  }

  send(msg) {
    this.ws.send(JSON.stringify(msg));
  }

  // The next frame `pick` returns something for; an `error` frame for request `id` fails it.
  wait(pick, id, ms = 20000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new FogError("signaling: no answer in time")), ms);
      this.waiters.push([
        (m) => {
          if (m.type === "error" && id !== undefined && m.id === id) {
            clearTimeout(timer);
            reject(new FogError(`${m.name}: ${m.message}`, { code: m.code, kind: m.name }));
            return true;
          }
          const v = pick(m);
          if (v === undefined) return false;
          clearTimeout(timer);
          resolve(v);
          return true;
        },
        resolve,
        reject,
      ]);
    });
  }

  frame(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (m.type === "ping") return this.send({ type: "pong", id: m.id });
    if (m.session && this.sessions.has(m.session) && m.type !== "offer_sent") {
      this.sessions.get(m.session)(m);
    }
    const i = this.waiters.findIndex(([pick]) => pick(m));
    if (i >= 0) this.waiters.splice(i, 1);
  }

  async handshake(realm, alias) {
    await new Promise((ok, fail) => {
      this.ws.onopen = ok;
      this.ws.onerror = () => fail(new FogError("cannot open the signaling WebSocket"));
    });
    const nonce = random(32);
    const challenge = this.wait((m) => (m.type === "challenge" ? m : undefined));
    this.send({ type: "hello", version: 1, nonce: hex(nonce) });
    const c = await challenge;
    const server = parsePeerId(c.server);
    const serverNonce = unhex(c.nonce, 32);
    if (!server || !serverNonce) throw new FogError("malformed challenge");
    const transcript = authTranscript(realm, server, nonce, serverNonce, this.identity.publicKey, alias);
    const signature = await this.identity.sign(transcript);
    const welcome = this.wait((m) =>
      m.type === "welcome" ? m : m.type === "error" ? Promise.reject(new FogError(m.message)) : undefined,
    );
    const auth = { type: "auth", peer: this.identity.peerId, challenge: c.nonce, signature: hex(signature) };
    if (alias) auth.alias = alias;
    this.send(auth);
    this.welcome = await welcome;
    this.server = c.server;
  }

  // The key of `target` (a peer id, or an alias the server knows), and whether it is online.
  async resolve(target) {
    const key = parsePeerId(target);
    const id = this.nextId++;
    const result = this.wait((m) => (m.type === "lookup_result" && m.id === id ? m : undefined), id);
    this.send({ type: "lookup", id, target: key ? peerIdText(key) : target });
    const r = await result;
    const found = r.peer && parsePeerId(r.peer);
    if (!found) throw new FogError(`no peer known as ${target}`);
    if (!r.online) throw new FogError(`${target} is not online`);
    return found;
  }

  // Short-lived TURN credentials from fogd (`relay_request`), as RTCPeerConnection's
  // iceServers: for a browser whose NAT (or the node's) leaves no direct path.
  async relayServers() {
    const id = this.nextId++;
    const creds = this.wait((m) => (m.type === "relay_credentials" && m.id === id ? m : undefined), id);
    this.send({ type: "relay_request", id });
    const c = await creds;
    return [{ urls: c.urls, username: c.username, credential: c.password }];
  }

  // Dials `target` (peer id or alias) for `service`: resolves to { pc, channel, peer,
  // session, openMs } once the data channel is open. `iceServers` go to RTCPeerConnection;
  // `relay` adds fogd's TURN server (with credentials it hands out) to them.
  // `signFingerprint` replaces the browser's own DTLS fingerprint in the signed offer: for
  // tests only, to show that the node then refuses the DTLS handshake.
  async dial(
    target,
    {
      service = 1,
      label = "fog",
      iceServers = [],
      relay = false,
      timeoutMs = 20000,
      gatherMs = 1500,
      signFingerprint,
    } = {},
  ) {
    const started = performance.now();
    const peerKey = await this.resolve(target);
    const peer = peerIdText(peerKey);
    if (relay) iceServers = iceServers.concat(await this.relayServers());
    const pc = new RTCPeerConnection({ iceServers });
    const channel = pc.createDataChannel(label, { ordered: true });
    channel.binaryType = "arraybuffer";
    await pc.setLocalDescription(await pc.createOffer());
    // Wait (a little) for the browser's candidates: the node checks them, which opens its NAT
    // toward us when it lets in only what went out first. Without them it still learns us
    // from our checks (peer-reflexive).
    if (pc.iceGatheringState !== "complete") {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, gatherMs);
        pc.addEventListener("icegatheringstatechange", () => {
          if (pc.iceGatheringState === "complete") {
            clearTimeout(timer);
            resolve();
          }
        });
      });
    }
    const local = fromLocalSdp(pc.localDescription.sdp);
    if (!local.ufrag || !local.pwd || !local.fingerprint) {
      pc.close();
      throw new FogError("the browser's offer lacks ICE credentials or a sha-256 fingerprint");
    }
    // Our exchange key is a fresh random value: the browser derives nothing from it (DTLS is
    // the encryption), but the node's signed answer names it, so the answer is to this offer.
    const offerKey = random(32);
    const d = {
      candidates: local.candidates,
      transports: ["browser"],
      credentials: { ufrag: local.ufrag, pwd: local.pwd },
      service,
      rtc: signFingerprint || local.fingerprint,
      seal: { key: hex(offerKey), signature: "" },
    };
    this.log(`offer: candidates ${JSON.stringify(d.candidates)}`);
    const me = this.identity.publicKey;
    d.seal.signature = hex(await this.identity.sign(descriptionTranscript({ from: me, to: peerKey }, d)));
    const id = this.nextId++;
    const sent = this.wait((m) => (m.type === "offer_sent" && m.id === id ? m.session : undefined), id);
    this.send({ type: "offer", id, to: peer, description: d });
    let session;
    try {
      session = await sent;
    } catch (e) {
      // Refused by the server (too many sessions, the peer went offline) or no answer: the
      // peer connection made for this offer goes too.
      pc.close();
      throw e;
    }
    let onClosed = () => {};
    const answered = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new FogError("no answer in time")), timeoutMs);
      this.sessions.set(session, (m) => {
        if (m.type === "answer") {
          clearTimeout(timer);
          resolve(m);
        } else if (m.type === "session_closed") {
          clearTimeout(timer);
          const why = new FogError(`refused or ended: ${m.reason}${m.code !== undefined ? ` (code ${m.code})` : ""}`);
          reject(why);
          onClosed(why);
        }
      });
    });
    let answer;
    try {
      answer = await answered;
    } catch (e) {
      pc.close();
      this.sessions.delete(session);
      throw e;
    }
    // The answer must be the dialled node's, to this offer, in this session: verified here
    // before anything of it reaches the browser's WebRTC stack.
    if (!(await verifyAnswer(answer, { peerKey, me, session, offerKey }))) {
      pc.close();
      this.send({ type: "close", session, code: 1, reason: "answer not verified" });
      this.sessions.delete(session);
      throw new FogError("the answer is not signed by the peer dialled: refused");
    }
    const a = answer.description;
    this.log(`answer verified: candidates ${JSON.stringify(a.candidates)}`);
    await pc.setRemoteDescription({ type: "answer", sdp: toRemoteSdp(a, local.mid) });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new FogError("the data channel did not open in time")), timeoutMs);
      onClosed = (e) => {
        clearTimeout(timer);
        reject(e);
      };
      channel.onopen = () => {
        clearTimeout(timer);
        resolve();
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "failed") {
          clearTimeout(timer);
          reject(new FogError("ICE or DTLS failed"));
        }
      };
    });
    this.sessions.set(session, () => {});
    channel.addEventListener("close", () => {
      this.sessions.delete(session);
      if (this.ws.readyState === WebSocket.OPEN) this.send({ type: "close", session, code: 0, reason: "closed" });
    });
    return { pc, channel, peer, session, openMs: performance.now() - started };
  }

  close() {
    this.ws.close(1000);
  }
}
