//! Reads a log in blocks of whole lines, for `banjo check`.
//!
//! One `read` fills a block of about [`BLOCK_BYTES`]; the partial line at
//! its end is carried into the next block. Lines are not copied one by
//! one: a worker gets the block and finds its lines (or only the lines
//! around a prefilter hit) itself. A line longer than [`MAX_LINE`] is
//! never held whole: it is counted and skipped as it streams past.

use std::io::Read;

/// Lines longer than this (bytes before the `\n`) are counted and skipped.
pub(crate) const MAX_LINE: usize = 1 << 20;
/// The size a block is filled to: large enough that handing blocks to
/// the workers costs little (256 KiB blocks spent a tenth of the time in
/// thread wake-ups and fresh pages), small enough to keep two busy.
const BLOCK_BYTES: usize = 1 << 20;

/// Whole lines, in input order.
#[derive(Debug, Default)]
pub(crate) struct Block {
    /// Position of the block in the input (0, 1, ...).
    pub(crate) index: u64,
    /// Number of the first line in `data` (from 1).
    pub(crate) first_line: u64,
    /// Lines, each ending with `\n` except perhaps the input's last.
    pub(crate) data: Vec<u8>,
    /// Lines in `data`.
    pub(crate) lines: u64,
    /// Lines skipped for their length, right after `data` (a block
    /// that skips one has no `data`).
    pub(crate) too_long: u64,
}

impl Block {
    /// The lines of `data`, without their `\n`.
    pub(crate) fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
        let empty = data.is_empty() && self.lines == 0;
        data.split(|&b| b == b'\n').filter(move |_| !empty)
    }
}

/// Splits an input into [`Block`]s.
pub(crate) struct BlockReader<R> {
    input: R,
    /// The start of a line not yet complete.
    carry: Vec<u8>,
    next_line: u64,
    next_index: u64,
    /// Inside a line that is too long: drop bytes until its `\n`.
    skipping: bool,
    eof: bool,
    /// A block read by [`BlockReader::peek`], handed out next.
    peeked: Option<Block>,
    /// Buffers of blocks already matched, to be filled again. A fresh
    /// 1 MiB buffer is fresh pages, each faulted in and zeroed by the
    /// kernel: a quarter of `banjo check`'s system time before buffers
    /// came back.
    spare: Vec<Vec<u8>>,
}

impl<R: Read> BlockReader<R> {
    pub(crate) fn new(input: R) -> BlockReader<R> {
        BlockReader {
            input,
            carry: Vec::new(),
            next_line: 1,
            next_index: 0,
            skipping: false,
            eof: false,
            peeked: None,
            spare: Vec::new(),
        }
    }

    /// Gives back the buffer of a block that is done with, to be filled
    /// again instead of a new one.
    pub(crate) fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.spare.push(buf);
    }

    /// The next block, without taking it: [`BlockReader::next_block`]
    /// returns it.
    pub(crate) fn peek(&mut self) -> std::io::Result<Option<&Block>> {
        if self.peeked.is_none() {
            self.peeked = self.read_block()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// The next block; `None` at the end of the input.
    pub(crate) fn next_block(&mut self) -> std::io::Result<Option<Block>> {
        match self.peeked.take() {
            Some(b) => Ok(Some(b)),
            None => self.read_block(),
        }
    }

    fn read_block(&mut self) -> std::io::Result<Option<Block>> {
        let mut data = match self.spare.pop() {
            Some(mut buf) => {
                buf.extend_from_slice(&self.carry);
                self.carry.clear();
                buf
            }
            None => std::mem::take(&mut self.carry),
        };
        loop {
            if self.skipping {
                match memchr::memchr(b'\n', &data) {
                    Some(p) => {
                        data.drain(..=p);
                        self.skipping = false;
                    }
                    None => data.clear(),
                }
            }
            if !self.skipping {
                match memchr::memrchr(b'\n', &data) {
                    // Complete lines: cut after the last `\n`, keep the rest.
                    Some(_) if self.eof => return Ok(Some(self.block(data, 0))),
                    Some(p) if data.len() >= BLOCK_BYTES => {
                        self.carry = data.split_off(p + 1);
                        return Ok(Some(self.block(data, 0)));
                    }
                    Some(_) => {}
                    // All of `data` is one unfinished line.
                    None if data.len() > MAX_LINE => {
                        self.skipping = true;
                        return Ok(Some(self.block(Vec::new(), 1)));
                    }
                    None if self.eof => {
                        return Ok((!data.is_empty()).then(|| self.block(data, 0)));
                    }
                    None => {}
                }
            } else if self.eof {
                return Ok(None);
            }
            self.fill(&mut data)?;
        }
    }

    /// Reads once into `data`, up to [`BLOCK_BYTES`] more, but no further
    /// than one byte past [`MAX_LINE`] of an unfinished line.
    fn fill(&mut self, data: &mut Vec<u8>) -> std::io::Result<()> {
        let line_start = memchr::memrchr(b'\n', data).map_or(0, |p| p + 1);
        let room = (line_start + MAX_LINE + 1).saturating_sub(data.len());
        let want = BLOCK_BYTES.min(room.max(1));
        data.reserve(want);
        // `read_to_end` on a `take` reads into the spare capacity without
        // zeroing it first, and stops at `want` bytes or at the end.
        let n = (&mut self.input).take(want as u64).read_to_end(data)?;
        if n < want {
            self.eof = true;
        }
        Ok(())
    }

    fn block(&mut self, data: Vec<u8>, too_long: u64) -> Block {
        let lines = memchr::memchr_iter(b'\n', &data).count() as u64
            + u64::from(data.last().is_some_and(|&b| b != b'\n'));
        let block = Block {
            index: self.next_index,
            first_line: self.next_line,
            data,
            lines,
            too_long,
        };
        self.next_index += 1;
        self.next_line += lines + too_long;
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block as (first line, lines, too long, its lines joined by `|`).
    fn summary(b: &Block) -> (u64, u64, u64, String) {
        let text = b
            .lines()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join("|");
        (b.first_line, b.lines, b.too_long, text)
    }

    /// Every block of `input`, summarised.
    fn blocks(input: &[u8]) -> Vec<(u64, u64, u64, String)> {
        let mut r = BlockReader::new(input);
        let mut out = Vec::new();
        while let Some(b) = r.next_block().expect("reading a slice") {
            out.push(summary(&b));
        }
        out
    }

    #[test]
    fn lines_with_and_without_a_final_newline() {
        assert_eq!(blocks(b"a\nb\n"), vec![(1, 2, 0, "a|b".into())]);
        assert_eq!(blocks(b"a\nb"), vec![(1, 2, 0, "a|b".into())]);
        assert_eq!(blocks(b"\n\nx\n"), vec![(1, 3, 0, "||x".into())]);
        assert_eq!(blocks(b""), vec![]);
    }

    #[test]
    fn a_peeked_block_is_the_next_one() {
        let mut r = BlockReader::new(&b"a\nb\n"[..]);
        let peeked = r.peek().expect("reading a slice").map(|b| b.data.clone());
        let next = r.next_block().expect("reading a slice").map(|b| b.data);
        assert_eq!(peeked, Some(b"a\nb\n".to_vec()));
        assert_eq!(next, peeked);
        assert!(r.next_block().expect("reading a slice").is_none());
    }

    #[test]
    fn long_input_is_cut_between_lines() {
        let line = vec![b'x'; 999];
        let mut input = Vec::new();
        let n = 3 * BLOCK_BYTES / 1000;
        for _ in 0..n {
            input.extend_from_slice(&line);
            input.push(b'\n');
        }
        let got = blocks(&input);
        assert!(got.len() > 1, "{} blocks", got.len());
        let mut next = 1;
        for (first, lines, _, text) in &got {
            assert_eq!(*first, next);
            assert!(text.split('|').all(|l| l.len() == 999));
            next += lines;
        }
        assert_eq!(next, n as u64 + 1);
    }

    #[test]
    fn refilled_buffers_give_the_same_blocks() {
        let mut input = Vec::new();
        for i in 0..(3 * BLOCK_BYTES / 20) {
            input.extend_from_slice(format!("line {i:>13}\n").as_bytes());
        }
        input.extend_from_slice(b"unterminated");
        let fresh = blocks(&input);
        let mut r = BlockReader::new(&input[..]);
        let mut refilled = Vec::new();
        while let Some(b) = r.next_block().expect("reading a slice") {
            refilled.push(summary(&b));
            // Dirty, so a buffer not cleared before refilling shows.
            let mut data = b.data;
            data.extend_from_slice(b"junk\n");
            r.recycle(data);
        }
        assert!(fresh.len() > 2, "{} blocks", fresh.len());
        assert_eq!(refilled, fresh);
    }

    #[test]
    fn a_line_over_the_limit_is_counted_and_skipped() {
        let mut input = b"first\n".to_vec();
        input.extend(std::iter::repeat(b'y').take(MAX_LINE + 1));
        input.extend_from_slice(b"\nlast\n");
        let got = blocks(&input);
        let total: u64 = got.iter().map(|b| b.1 + b.2).sum();
        assert_eq!(total, 3);
        assert_eq!(got.iter().map(|b| b.2).sum::<u64>(), 1);
        let texts: Vec<&str> = got
            .iter()
            .map(|b| b.3.as_str())
            .filter(|t| !t.is_empty())
            .collect();
        assert_eq!(texts, vec!["first", "last"]);
        // Numbering continues after the skipped line.
        assert_eq!(got.last().map(|b| b.0), Some(3));
    }

    #[test]
    fn a_line_at_the_limit_is_kept() {
        let mut input = vec![b'z'; MAX_LINE];
        input.push(b'\n');
        let got = blocks(&input);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].1, got[0].2), (1, 0));
        // Unterminated and too long at the end of the input.
        let input = vec![b'z'; MAX_LINE + 5];
        assert_eq!(blocks(&input), vec![(1, 0, 1, String::new())]);
    }
}
