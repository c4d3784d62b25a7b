//! The journal reader on journal files written by systemd-journal-remote:
//! the handle it replaces after `REOPEN_AFTER` entries (to drop what
//! sd_journal mapped) must continue exactly where the old one was, and the
//! line it builds for fail2ban's filters must be fail2ban's.

use std::os::fd::BorrowedFd;

use banjo::jail::{JournalMatch, MatchTerm};
use banjo::journal::{Journal, Source, REOPEN_AFTER};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::util::*;

fn postfix_only() -> Vec<JournalMatch> {
    vec![JournalMatch {
        groups: vec![vec![MatchTerm {
            field: "_SYSTEMD_UNIT".into(),
            value: "postfix@-.service".into(),
        }]],
    }]
}

/// `n` numbered postfix entries from `base` µs, one other unit's entry
/// (which the match skips) after every tenth.
fn numbered(base: u64, from: u64, n: u64) -> Vec<Entry> {
    let mut v = Vec::new();
    for i in from..from + n {
        v.push(Entry::smtpd(base + 2 * i, &format!("entry {i}")));
        if i % 10 == 0 {
            let mut other = Entry::smtpd(base + 2 * i + 1, "not postfix");
            other.unit = "cron.service".into();
            v.push(other);
        }
    }
    v
}

fn read_all(j: &mut Journal, into: &mut Vec<String>) {
    while let Some(e) = j.next_entry().unwrap() {
        into.push(String::from_utf8(e.message.to_vec()).unwrap());
    }
}

/// Follows the journal, as the daemon does on wakeups, until `into` holds
/// `n` entries or 10 s have passed.
fn read_until(j: &mut Journal, into: &mut Vec<String>, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while into.len() < n && std::time::Instant::now() < deadline {
        j.process().unwrap();
        read_all(j, into);
    }
}

/// Asserts `seen` is `entry from` .. `entry to-1`, naming the first
/// difference rather than printing thousands of entries.
fn assert_read(seen: &[String], from: u64, to: u64) {
    let want: Vec<String> = (from..to).map(|i| format!("entry {i}")).collect();
    if let Some(at) = (0..want.len().max(seen.len())).find(|&i| seen.get(i) != want.get(i)) {
        panic!(
            "read {} entries, {} expected; at {at}: read {:?}, expected {:?}",
            seen.len(),
            want.len(),
            seen.get(at),
            want.get(at)
        );
    }
}

/// A reader of `dir`'s postfix entries, before the first one; `want_line`
/// as for [`Journal::open`].
fn open_at_start(dir: &JournalDir, want_line: bool) -> Journal {
    let mut j = Journal::open(
        &Source::Directory(dir.path().to_path_buf()),
        &postfix_only(),
        want_line,
    )
    .unwrap();
    j.seek_time(0).unwrap();
    j
}

/// A reader that has read all of a file of `n` numbered entries an hour
/// old, to follow appends: (directory, base time, reader, what it read).
fn caught_up(n: u64) -> (JournalDir, u64, Journal, Vec<String>) {
    let dir = JournalDir::new();
    let base = now_micros() - 3_600_000_000;
    dir.write_file("old", &numbered(base, 0, n));
    let mut j = open_at_start(&dir, false);
    let mut seen = Vec::new();
    read_all(&mut j, &mut seen);
    (dir, base, j, seen)
}

#[test]
fn the_reopened_reader_neither_loses_nor_repeats_an_entry() {
    let mut dir = JournalDir::new();
    let base = now_micros() - 3_600_000_000;
    let n = REOPEN_AFTER + 100;
    dir.write_file("old", &numbered(base, 0, n));
    let mut j = open_at_start(&dir, false);
    let before = j.fd().unwrap();
    let mut seen = Vec::new();
    read_all(&mut j, &mut seen);
    assert_read(&seen, 0, n);
    // The fresh handle's fd was opened while the old one was still open.
    let after = j.fd().unwrap();
    assert_ne!(before, after, "no reopen after {n} entries");
    // Still on the last entry read, as the daemon's saved position needs.
    let cursor = j.cursor().unwrap();
    assert!(j.is_at(&cursor));
    assert_eq!(j.time().unwrap(), base + 2 * (n - 1));

    // Entries written from now on wake the new fd and are read once.
    for e in numbered(base, n, 3) {
        dir.append(&e);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen.len() < (n + 3) as usize && std::time::Instant::now() < deadline {
        let fd = j.fd().unwrap();
        // SAFETY: the fd belongs to `j`, untouched until poll returns.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let woke = poll(&mut fds, PollTimeout::from(1000u16)).unwrap();
        assert_eq!(woke, 1, "the reopened handle's fd did not wake");
        j.process().unwrap();
        read_all(&mut j, &mut seen);
    }
    assert_read(&seen, 0, n + 3);
}

#[test]
fn the_old_reader_is_kept_when_its_entry_is_gone() {
    let dir = JournalDir::new();
    let base = now_micros() - 3_600_000_000;
    let n = REOPEN_AFTER + 1;
    dir.write_file("old", &numbered(base, 0, n));
    let mut j = open_at_start(&dir, false);
    let before = j.fd().unwrap();
    for i in 0..n {
        let e = j.next_entry().unwrap().expect("an entry");
        assert_eq!(e.message, format!("entry {i}").as_bytes());
    }
    let cursor = j.cursor().unwrap();
    // Vacuumed: a fresh handle cannot find the current entry any more.
    std::fs::remove_file(dir.path().join("old.journal")).unwrap();
    assert!(j.next_entry().unwrap().is_none());
    assert_eq!(
        j.fd().unwrap(),
        before,
        "replaced by a handle that lost its place"
    );
    assert!(j.is_at(&cursor));
}

/// A reader polled on a timer looks again from its cursor after a run of
/// empty reads (after 8, then 16, then every 32): whatever the number of
/// empty reads between two appends, each entry is read exactly once.
#[test]
fn empty_reads_between_appends_neither_lose_nor_repeat_an_entry() {
    let (mut dir, base, mut j, mut seen) = caught_up(5);
    let mut next = 5;
    // 0 to 40 empty reads between appends: before, at and past each
    // look again, the backoff included.
    for empty in [0, 1, 7, 8, 9, 16, 17, 40, 100] {
        for _ in 0..empty {
            assert!(j.next_entry().unwrap().is_none());
        }
        for e in numbered(base, next, 2) {
            dir.append(&e);
        }
        next += 2;
        read_until(&mut j, &mut seen, next as usize);
    }
    assert_read(&seen, 0, next);
}

/// Another unit's entry moves the journal's newest time without giving
/// the reader anything: the empty reads after it look again from the
/// cursor (`Journal::grew_unseen`), which must land exactly where the
/// reader was.
#[test]
fn looks_again_after_other_units_entries_neither_lose_nor_repeat_an_entry() {
    let (mut dir, base, mut j, mut seen) = caught_up(3);
    for i in 3..23u64 {
        let mut other = Entry::smtpd(base + 2 * i, "not postfix");
        other.unit = "cron.service".into();
        dir.append(&other);
        for _ in 0..3 {
            j.process().unwrap();
            assert!(j.next_entry().unwrap().is_none(), "after entry {i}");
        }
        dir.append(&Entry::smtpd(base + 2 * i + 1, &format!("entry {i}")));
        read_until(&mut j, &mut seen, i as usize + 1);
        // A few more empty reads: the entry just read must not come again.
        for _ in 0..3 {
            read_all(&mut j, &mut seen);
        }
    }
    assert_read(&seen, 0, 23);
}

/// An entry written after the reader's last read but before it first
/// asks for its fd wakes that fd: the reader watches the journal from its
/// open. (sd_journal starts watching on the first request for the fd: a
/// daemon reading what is there at start, then waiting, slept through the
/// entries written in between, and on until the next one.)
#[test]
fn an_entry_written_before_the_first_wait_wakes_it() {
    let (mut dir, base, mut j, mut seen) = caught_up(3);
    dir.append(&Entry::smtpd(base + 100, "entry 3"));
    // On disk once a fresh reader finds it.
    let mut witness = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while witness.len() < 4 && std::time::Instant::now() < deadline {
        witness.clear();
        read_all(&mut open_at_start(&dir, false), &mut witness);
    }
    assert_read(&witness, 0, 4);
    let fd = j.fd().unwrap();
    // SAFETY: the fd belongs to `j`, untouched until poll returns.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let woke = poll(&mut fds, PollTimeout::from(2000u16)).unwrap();
    assert_eq!(woke, 1, "the entry written before the wait did not wake it");
    j.process().unwrap();
    read_all(&mut j, &mut seen);
    assert_read(&seen, 0, 4);
}

#[test]
fn fail2bans_line_shows_the_monotonic_time_of_a_pidless_kernel_line_only() {
    let dir = JournalDir::new();
    let mono = "_SOURCE_MONOTONIC_TIMESTAMP=12345678\n";
    let mut kernel = Entry::smtpd(1_700_000_000_000_000, "oops");
    kernel.ident = "kernel".into();
    kernel.pid = None;
    kernel.extra = mono.into();
    let mut kernel_with_pid = kernel.clone();
    kernel_with_pid.time += 1;
    kernel_with_pid.pid = Some(7);
    let mut smtpd = Entry::smtpd(kernel.time + 2, "connect");
    smtpd.extra = mono.into();
    dir.write_file("kernel", &[kernel, kernel_with_pid, smtpd]);
    let mut j = open_at_start(&dir, true);
    let mut lines = Vec::new();
    while let Some(e) = j.next_entry().unwrap() {
        lines.push(String::from_utf8(e.line.to_vec()).unwrap());
    }
    assert_eq!(
        lines,
        [
            "email kernel: [   12.345678] oops",
            "email kernel[7]: oops",
            "email postfix/smtpd[22095]: connect",
        ]
    );
}
