//! FogConnect benchmarks live in this package's `benches`; results are in `RESULTS.md`.
