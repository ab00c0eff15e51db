//! Links `fogconnect` with packed relative relocations (`-z pack-relative-relocs`, DT_RELR) on
//! Linux with glibc.
//!
//! A position-independent executable carries one 24-byte RELA entry for every pointer the
//! loader must adjust to where the program landed (half a megabyte for `fogconnect`), and the
//! loader reads the whole table at start, so it stays resident. RELR packs runs of them into
//! bitmaps: the table shrinks about a hundredfold, and with it the read-only data an idle node
//! keeps resident, by 0.5 MB (benches/RESULTS.md, "Packed relative relocations"), while the
//! executable stays position-independent
//! (randomised by ASLR). The binary then needs glibc 2.36 or newer to run (older loaders
//! refuse it by name: `GLIBC_ABI_DT_RELR`); the linker rustc uses (LLD) and GNU ld from
//! binutils 2.38 understand the flag. `FOG_RELR=0 cargo build ...` leaves it out, for an
//! older glibc (and for the memory bench's comparison).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let wanted = std::env::var("FOG_RELR").map_or(true, |v| v != "0");
    if os == "linux" && env == "gnu" && wanted {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FOG_RELR");
}
