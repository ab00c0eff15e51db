//! FogConnect benchmarks live in this package's `benches`; results are in `RESULTS.md`.

/// A byte count as the benches take it on the command line: a number, then `B`, `KiB`, `MiB`
/// or `GiB` (none: bytes).
///
/// # Panics
///
/// On anything else, naming what it expected: these are command-line arguments.
pub fn parse_size(s: &str) -> u64 {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = number
        .parse()
        .expect("a size is a number with B, KiB, MiB or GiB");
    n * match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => panic!("unknown unit {other}"),
    }
}

/// The bytes the transfer benches move: a 64-bit LCG, so that no two messages are alike and
/// both sides can make the same stream from the same seed.
#[derive(Debug, Clone)]
pub struct Pattern(pub u64);

impl Pattern {
    /// The pattern's next `buf.len()` bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
