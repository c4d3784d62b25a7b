//! Gives back what starting up needed and watching the journal does not.
//!
//! Reading the configuration, importing fail2ban filters, compiling the
//! automata and setting up nftables run at start and on reload, then not
//! again. Two kinds of memory outlive them:
//!
//! - heap pages their temporaries freed, which glibc keeps for later
//!   allocations; `malloc_trim(0)` returns them to the kernel;
//! - pages of the binary and of the shared libraries that the kernel
//!   mapped while they ran. A page fault on a file mapping maps its whole
//!   neighbourhood (64 KiB by default), so after start-up most of banjo's
//!   text and of libc's counts in the RSS, though the poll loop uses a
//!   small part of either. Those pages are the file's own, in the page
//!   cache: unmapping them (`MADV_DONTNEED`) costs no I/O and loses no
//!   data, the next use maps them again with a minor fault, and meanwhile
//!   they count as what they are, cache the kernel may reclaim.
//!
//! Only read-only private file mappings without a single anonymous
//! (copy-on-write) page are unmapped: for those, the file's pages are the
//! whole content. A mapping that was ever written, such as the relocated
//! RELRO part of a library, keeps its private copies and is left alone, as
//! are writable and shared mappings (the journal files sd_journal maps).

use std::fs;

/// What one trim gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Resident bytes of read-only file mappings that were unmapped.
    pub file_bytes: u64,
    /// Mappings unmapped.
    pub mappings: usize,
}

/// Returns freed heap to the kernel and unmaps the file pages that are
/// safe to unmap (see the module documentation). Best effort: without
/// `/proc` it only trims the heap.
pub fn trim() -> Trimmed {
    // SAFETY: malloc_trim only releases free memory of glibc's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return Trimmed::default();
    };
    let mut trimmed = Trimmed::default();
    for m in unmappable(&smaps) {
        // SAFETY: `m` is a read-only private file mapping without
        // anonymous pages, so every page of it is the file's own page in
        // the page cache, and is mapped again, unchanged, on the next
        // access. madvise does not move or resize the mapping.
        let done =
            unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
        if done == 0 {
            trimmed.file_bytes += m.resident;
            trimmed.mappings += 1;
        }
    }
    trimmed
}

/// A mapping of `/proc/self/smaps` that may be unmapped.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    len: usize,
    resident: u64,
}

/// The mappings of an smaps text that are read-only, private, backed by a
/// file, resident and without anonymous pages.
fn unmappable(smaps: &str) -> Vec<Mapping> {
    /// The mapping being read; its Rss and Anonymous come on later lines.
    struct Reading {
        start: usize,
        len: usize,
        eligible: bool,
        rss_kb: Option<u64>,
        anonymous_kb: Option<u64>,
    }
    let mut found = Vec::new();
    let mut close = |m: Option<Reading>| {
        if let Some(m) = m {
            if let (true, Some(rss_kb @ 1..), Some(0)) = (m.eligible, m.rss_kb, m.anonymous_kb) {
                found.push(Mapping {
                    start: m.start,
                    len: m.len,
                    resident: rss_kb * 1024,
                });
            }
        }
    };
    let mut current = None;
    for line in smaps.lines() {
        if let Some((start, len, eligible)) = header(line) {
            close(current.take());
            current = Some(Reading {
                start,
                len,
                eligible,
                rss_kb: None,
                anonymous_kb: None,
            });
        } else if let Some(m) = current.as_mut() {
            if let Some(kb) = field_kb(line, "Rss:") {
                m.rss_kb = Some(kb);
            } else if let Some(kb) = field_kb(line, "Anonymous:") {
                m.anonymous_kb = Some(kb);
            }
        }
    }
    close(current);
    found
}

/// A mapping's header line, `start-end perms offset dev inode [path]`:
/// its start, length and whether it is a read-only private file mapping.
/// `None` for the other lines (`Rss:`, `VmFlags:` ...).
fn header(line: &str) -> Option<(usize, usize, bool)> {
    let mut words = line.split_ascii_whitespace();
    let (start, end) = words.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = words.next()?.as_bytes();
    if perms.len() != 4 || end <= start {
        return None;
    }
    let path = words.nth(3);
    let read_only_private = perms[0] == b'r' && perms[1] == b'-' && perms[3] == b'p';
    let from_file = path.is_some_and(|p| p.starts_with('/'));
    Some((start, end - start, read_only_private && from_file))
}

/// The value of a `Name:   123 kB` line, in kB.
fn field_kb(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?;
    rest.trim().strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 1234 /usr/sbin/banjo
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
55d0c0100000-55d0c0400000 r-xp 00100000 08:01 1234 /usr/sbin/banjo
Size:               3072 kB
Rss:                2048 kB
Anonymous:             0 kB
55d0c0400000-55d0c0410000 r--p 00400000 08:01 1234 /usr/sbin/banjo
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
55d0c0410000-55d0c0420000 rw-p 00410000 08:01 1234 /usr/sbin/banjo
Size:                 64 kB
Rss:                  64 kB
Anonymous:            16 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Rss:                 512 kB
Anonymous:           512 kB
7f0000000000-7f0000800000 r--s 00000000 08:01 99 /var/log/journal/x/system.journal
Rss:                 256 kB
Anonymous:             0 kB
7f0001000000-7f0001100000 r-xp 00000000 08:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
7f0002000000-7f0002001000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f0003000000-7f0003100000 r-xp 00000000 08:01 78 /usr/lib/x86_64-linux-gnu/libsystemd.so.0
Rss:                 640 kB
";

    #[test]
    fn only_clean_read_only_private_file_mappings_are_unmapped() {
        let got = unmappable(SMAPS);
        assert_eq!(
            got,
            vec![
                Mapping {
                    start: 0x55d0c0000000,
                    len: 0x100000,
                    resident: 512 * 1024
                },
                Mapping {
                    start: 0x55d0c0100000,
                    len: 0x300000,
                    resident: 2048 * 1024
                },
            ],
            "not the RELRO part (anonymous pages), .data, the heap, a shared journal \
             file, a mapping with nothing resident, the vdso, nor one whose smaps \
             lacks an Anonymous line"
        );
    }

    #[test]
    fn trimming_unmaps_resident_file_pages_and_the_code_still_runs() {
        let before = resident_file_kb();
        let trimmed = trim();
        assert!(trimmed.mappings > 0, "{trimmed:?}");
        let after = resident_file_kb();
        // This very test runs afterwards, from pages mapped again on use.
        assert!(
            after < before,
            "resident file pages {before} kB before the trim, {after} kB after"
        );
        assert_eq!(header("00400000-00400000 r-xp 0 0 0 /x"), None);
    }

    fn resident_file_kb() -> u64 {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| field_kb(l, "RssFile:"))
            .unwrap_or(0)
    }
}
