//! The QUIC anchor of the transfer bench: the `quinn` crate's own tokio endpoints on loopback,
//! one uni stream, the same bytes in the same messages, hashed the same way. Same windows
//! (1 MiB per stream, 4 MiB per connection, 4 MiB send) and the same packet size as our
//! QUIC runs inside the seal, path MTU discovery off as ours; quinn keeps its own way of
//! driving sockets (batched sends where the kernel offers them), which is what the anchor is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{LIMIT, Options, Pattern, Run, cpu_seconds};

/// The largest UDP payload: what our QUIC sends inside the seal.
const MTU: u16 = fogconnect::MAX_DATAGRAM as u16;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(1 << 20))
        .receive_window(quinn::VarInt::from_u32(4 << 20))
        .send_window(4 << 20)
        .initial_mtu(MTU)
        .mtu_discovery_config(None);
    Arc::new(t)
}

pub(super) fn quinn_crate(o: &Options) -> Run {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(transfer(o.size, o.message))
}

async fn transfer(size: u64, message: usize) -> Run {
    let cert = rcgen::generate_simple_self_signed(vec!["anchor".to_owned()]).expect("a cert");
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let mut server_config =
        quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key.into()).expect("server");
    server_config.transport_config(transport());
    let server = quinn::Endpoint::server(server_config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("a server endpoint");
    let server_addr = server.local_addr().expect("its address");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).expect("the anchor's root");
    let mut client_config =
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client");
    client_config.transport_config(transport());
    let mut client =
        quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("a client");
    client.set_default_client_config(client_config);

    let receiver = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("a connection")
            .await
            .expect("handshake");
        let mut stream = conn.accept_uni().await.expect("a stream");
        let mut hash = Sha256::new();
        let mut got = 0u64;
        let deadline = tokio::time::Instant::now() + LIMIT;
        while got < size {
            let chunk = tokio::time::timeout_at(deadline, stream.read_chunk(1 << 20, true)).await;
            match chunk {
                Ok(Ok(Some(chunk))) => {
                    got += chunk.bytes.len() as u64;
                    hash.update(&chunk.bytes);
                }
                _ => break,
            }
        }
        (Instant::now(), got, hash.finalize())
    });
    let conn = client
        .connect(server_addr, "anchor")
        .expect("a dial")
        .await
        .expect("handshake");
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut stream = conn.open_uni().await.expect("a stream");
    let mut pattern = Pattern(7);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; message];
    let mut left = size;
    while left > 0 {
        let n = (message as u64).min(left) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        stream
            .write_all(&buf[..n])
            .await
            .expect("the stream takes it");
        left -= n as u64;
    }
    stream.finish().expect("finish");
    let (end, got, theirs) = receiver.await.expect("the receiver");
    let cpu_s = cpu_seconds() - cpu0;
    conn.close(0u32.into(), b"done");
    Run {
        secs: end.duration_since(start).as_secs_f64(),
        cpu_s,
        hash_ok: got == size && theirs == hash.finalize(),
    }
}
