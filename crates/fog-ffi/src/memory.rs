//! An idle node's resident memory: page faults on the program's own code and read-only data
//! map the one page that was touched, not the kernel's fault-around window.
//!
//! When a process first touches a page of a file mapping, Linux maps the page and, around it,
//! up to `fault_around_bytes` (64 KiB by default) of that file's pages already in the page
//! cache (`do_fault_around` in `mm/memory.c`). For a program's code this means that every
//! function run once at start keeps up to 15 neighbours resident: most of an idle
//! `fogconnect serve`'s 3.4–4.1 MiB of resident code (benches/RESULTS.md, "Memory").
//! `madvise(MADV_RANDOM)` does not turn it off (it only stops read-ahead from disk; measured
//! on Linux 6.18: one touch of a cached file mapping still makes 64 KiB resident, with or
//! without it). What does is a userfaultfd registration in write-protect mode on the range:
//! the kernel never faults around in a range it may have to report write faults for
//! (`uffd_disable_fault_around`). With `UFFD_FEATURE_WP_ASYNC` (Linux 6.7) any mapping may be
//! registered so, the kernel resolves any write-protect fault itself (nobody reads the
//! descriptor), and our ranges are never written anyway: code (`r-x`) and read-only data
//! (`r--`). `UFFD_USER_MODE_ONLY` needs no privilege. The descriptor stays open for the life
//! of the process (closing it would end the registration).
//!
//! The cost: one minor fault per page of code first touched instead of one per 64 KiB (a few
//! hundred faults more at start, well under a millisecond; `cargo bench -p fog-cli --bench
//! cold_start` measures start to first echo). A debugger's breakpoints (written through
//! ptrace) still work.

use std::io;

/// Makes page faults in the code and read-only data of the object file holding this library
/// (the executable when it is linked statically, as in `fogconnect` or a C program linked with
/// `libfogconnect_ffi.a`; the shared library when loaded as `libfogconnect_ffi.so`) map one
/// page each instead of the kernel's fault-around window; see the module docs. Returns the
/// bytes of address space it applies to. Later calls do nothing and return the first call's
/// answer (an error's kind only).
///
/// Linux 6.7 or newer on x86_64 or aarch64; elsewhere, and where a seccomp filter refuses
/// `userfaultfd` (Docker's default profile does), an error: nothing changed, the process runs
/// as before with a larger resident set. The environment variable `FOG_FAULT_AROUND=1` keeps
/// the kernel's default (returns `Ok(0)`), for comparisons.
pub fn fault_code_pages_singly() -> io::Result<usize> {
    use std::sync::OnceLock;
    /// A failure kept for later calls: its kind, its OS code, its text.
    type Failure = (io::ErrorKind, Option<i32>, String);
    /// The first call's answer.
    static DONE: OnceLock<Result<usize, Failure>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        if std::env::var_os("FOG_FAULT_AROUND").is_some_and(|v| v == "1") {
            return Ok(0);
        }
        imp::register_own_object().map_err(|e| (e.kind(), e.raw_os_error(), e.to_string()))
    });
    match result {
        Ok(bytes) => Ok(*bytes),
        Err((_, Some(code), _)) => Err(io::Error::from_raw_os_error(*code)),
        Err((kind, None, text)) => Err(io::Error::new(*kind, text.clone())),
    }
}

/// The read-only file mappings (code and read-only data) of the object holding `addr`, from
/// /proc/self/maps: `(start, end)` pairs. Writable mappings are left out (their pages are
/// written: relocations, statics), and so are those of any other file.
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )),
    allow(dead_code)
)]
fn read_only_ranges(maps: &str, addr: usize) -> Vec<(usize, usize)> {
    struct Line<'a> {
        start: usize,
        end: usize,
        writable: bool,
        path: &'a str,
    }
    fn parse(line: &str) -> Option<Line<'_>> {
        let mut words = line.split_whitespace();
        let (start, end) = words.next()?.split_once('-')?;
        let perms = words.next()?;
        let path = words.nth(3).unwrap_or("");
        Some(Line {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            writable: perms.as_bytes().get(1) == Some(&b'w'),
            path,
        })
    }
    let lines: Vec<Line<'_>> = maps.lines().filter_map(parse).collect();
    let Some(own) = lines
        .iter()
        .find(|l| l.start <= addr && addr < l.end && l.path.starts_with('/'))
    else {
        return Vec::new();
    };
    let path = own.path;
    lines
        .iter()
        .filter(|l| l.path == path && !l.writable && l.start < l.end)
        .map(|l| (l.start, l.end))
        .collect()
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod imp {
    //! The userfaultfd calls (linux/userfaultfd.h; the generic `_IOWR` ioctl encoding of
    //! x86_64 and aarch64).

    use std::io;
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::sync::OnceLock;

    /// `UFFD_API`: the protocol version `UFFDIO_API` checks.
    const UFFD_API: u64 = 0xAA;
    /// `UFFD_USER_MODE_ONLY` (Linux 5.11): only faults from user mode are handled, which
    /// needs no privilege (`vm.unprivileged_userfaultfd` stays 0).
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    /// `UFFD_FEATURE_WP_ASYNC` (Linux 6.7): the kernel resolves write-protect faults itself,
    /// and write-protect registration is allowed on any memory, file pages included.
    const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    /// `UFFDIO_REGISTER_MODE_WP`.
    const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    /// `_IOWR(0xAA, 0x3F, struct uffdio_api)`: 24 bytes.
    const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
    /// `_IOWR(0xAA, 0x00, struct uffdio_register)`: 32 bytes.
    const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;

    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }

    #[repr(C)]
    struct UffdioRegister {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }

    /// The registered descriptor, open until the process ends.
    static FD: OnceLock<OwnedFd> = OnceLock::new();

    /// A userfaultfd with asynchronous write protection enabled.
    pub(super) fn open() -> io::Result<OwnedFd> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
        // SAFETY: userfaultfd(2) takes one integer argument and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor the kernel just opened for us and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which `api` is (same
        // layout, alive for the call).
        let r = unsafe { libc::ioctl(raw(&fd), UFFDIO_API, &mut api as *mut UffdioApi) };
        if r < 0 {
            // EINVAL here: a kernel without the feature (before 6.7).
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("userfaultfd without asynchronous write protection (Linux < 6.7?): {e}"),
            ));
        }
        Ok(fd)
    }

    fn raw(fd: &OwnedFd) -> libc::c_int {
        use std::os::fd::AsRawFd as _;
        fd.as_raw_fd()
    }

    /// Registers `[start, start + len)` in write-protect mode. The kernel checks the range:
    /// page-aligned, mapped, and registrable; an error otherwise.
    pub(super) fn register(fd: &OwnedFd, start: usize, len: usize) -> io::Result<()> {
        let mut reg = UffdioRegister {
            start: start as u64,
            len: len as u64,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`, which `reg`
        // is (same layout, alive for the call). It changes how faults in the range are
        // handled, not what the memory holds; the caller passes read-only mappings.
        let r = unsafe { libc::ioctl(raw(fd), UFFDIO_REGISTER, &mut reg as *mut UffdioRegister) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn register_own_object() -> io::Result<usize> {
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let here = super::fault_code_pages_singly as *const () as usize;
        let ranges = super::read_only_ranges(&maps, here);
        if ranges.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no file mapping holds this library's code",
            ));
        }
        let fd = open()?;
        let mut bytes = 0;
        for (start, end) in ranges {
            register(&fd, start, end - start)?;
            bytes += end - start;
        }
        // Closing the descriptor would end the registrations: it stays open. Only the first
        // call gets here (`fault_code_pages_singly`'s OnceLock).
        let _ = FD.set(fd);
        Ok(bytes)
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod imp {
    use std::io;

    pub(super) fn register_own_object() -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "turning fault-around off needs Linux (userfaultfd)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:00 123 /usr/bin/fogconnect
55d0c0100000-55d0c0900000 r-xp 00100000 fe:00 123 /usr/bin/fogconnect
55d0c0900000-55d0c0980000 r--p 00900000 fe:00 123 /usr/bin/fogconnect
55d0c0980000-55d0c0990000 rw-p 00980000 fe:00 123 /usr/bin/fogconnect
55d0c0990000-55d0c09a0000 rw-p 00000000 00:00 0
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000020000 r--p 00000000 fe:00 9 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000020000-7f0000180000 r-xp 00020000 fe:00 9 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn the_read_only_mappings_of_the_object_holding_the_address() {
        assert_eq!(
            read_only_ranges(MAPS, 0x55d0_c010_0040),
            vec![
                (0x55d0_c000_0000, 0x55d0_c010_0000),
                (0x55d0_c010_0000, 0x55d0_c090_0000),
                (0x55d0_c090_0000, 0x55d0_c098_0000),
            ]
        );
        assert_eq!(
            read_only_ranges(MAPS, 0x7f00_0002_1000),
            vec![
                (0x7f00_0000_0000, 0x7f00_0002_0000),
                (0x7f00_0002_0000, 0x7f00_0018_0000),
            ]
        );
        // An anonymous mapping, the heap, no mapping at all: nothing.
        assert!(read_only_ranges(MAPS, 0x55d0_c099_0000).is_empty());
        assert!(read_only_ranges(MAPS, 0x55d0_c100_0000).is_empty());
        assert!(read_only_ranges(MAPS, 0x1000).is_empty());
        assert!(read_only_ranges("garbage\n\n1-2\n", 1).is_empty());
    }

    /// The kernel's release as (major, minor): "6.18.44-..." → (6, 18).
    #[cfg(target_os = "linux")]
    fn kernel() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// The VmFlags of the mapping holding `addr`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("reading smaps");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((start, end)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                inside = start <= addr && addr < end;
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.trim().to_owned();
            }
        }
        String::new()
    }

    /// On Linux 6.7 or newer the test binary's own code ends up registered (smaps shows the
    /// `uw` flag: userfaultfd write-protect) and a second call changes nothing; where the
    /// kernel or a seccomp filter refuses, the error says so and nothing is registered.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn own_code_is_registered_on_linux() {
        let here = fault_code_pages_singly as *const () as usize;
        assert!(!vm_flags(here).split(' ').any(|f| f == "uw"));
        match fault_code_pages_singly() {
            Ok(bytes) => {
                assert!(bytes >= 4096, "{bytes} bytes registered");
                let flags = vm_flags(here);
                assert!(
                    flags.split(' ').any(|f| f == "uw"),
                    "the code's mapping has VmFlags {flags}"
                );
                assert_eq!(fault_code_pages_singly().expect("again"), bytes);
            }
            Err(e) => {
                let refused = matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS));
                assert!(
                    kernel() < (6, 7) || refused,
                    "refused on {:?}: {e}",
                    kernel()
                );
                assert!(!vm_flags(here).split(' ').any(|f| f == "uw"));
            }
        }
    }

    /// The kernel checks the range: unaligned, empty or unmapped ones are refused.
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn a_bad_range_is_an_error() {
        let Ok(fd) = imp::open() else {
            // Before Linux 6.7 or under a seccomp filter: the other test covers that.
            return;
        };
        assert!(imp::register(&fd, 1, 4096).is_err(), "unaligned");
        assert!(imp::register(&fd, 4096 * 16, 0).is_err(), "empty");
        assert!(imp::register(&fd, 4096 * 16, 4096).is_err(), "unmapped");
    }
}
