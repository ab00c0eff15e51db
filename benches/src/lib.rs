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
