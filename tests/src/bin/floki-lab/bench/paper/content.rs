//! What a stream carries: a pseudo-random block of an odd size, repeated, so
//! that producers write and consumers check at memory speed, and a block
//! never lines up with a transport's chunks.

use std::collections::HashMap;

use super::scenario::Stream;

/// Bytes in a block: 1 MiB and a few, on purpose not a power of two.
const BLOCK: usize = (1 << 20) + 7;

/// The content of one stream.
pub struct Content {
    block: Vec<u8>,
}

impl Content {
    pub fn new(seed: u64) -> Self {
        Self {
            block: floki_tests::pattern(BLOCK, seed),
        }
    }

    /// The next piece to write at `offset`: at most the rest of the block,
    /// and at most `left` bytes.
    pub fn piece(&self, offset: u64, left: u64) -> &[u8] {
        let start = (offset % BLOCK as u64) as usize;
        let len = (BLOCK - start).min(usize::try_from(left).unwrap_or(usize::MAX));
        &self.block[start..start + len]
    }

    /// Fills `buf` with the bytes at `offset`.
    pub fn fill(&self, mut offset: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let piece = self.piece(offset, (buf.len() - done) as u64);
            buf[done..done + piece.len()].copy_from_slice(piece);
            done += piece.len();
            offset += piece.len() as u64;
        }
    }

    /// Whether `data` is what the stream holds at `offset`.
    pub fn matches(&self, mut offset: u64, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let piece = self.piece(offset, data.len() as u64);
            if data[..piece.len()] != *piece {
                return false;
            }
            data = &data[piece.len()..];
            offset += piece.len() as u64;
        }
        true
    }
}

/// The content of every stream of a function's plan, generated once: a warm
/// function has its output ready before it is told to go, and generating
/// it is no part of any system's hand-off.
pub struct Contents(HashMap<u64, Content>);

impl Contents {
    pub fn new(streams: &[Stream]) -> Self {
        Self(
            streams
                .iter()
                .map(|stream| (stream.seed, Content::new(stream.seed)))
                .collect(),
        )
    }

    /// The content of `stream`, one of the plan's.
    pub fn of(&self, stream: &Stream) -> &Content {
        &self.0[&stream.seed]
    }
}

/// Checks a stream as it arrives, in order.
pub struct Checker<'a> {
    content: &'a Content,
    offset: u64,
    expected: u64,
}

impl<'a> Checker<'a> {
    pub fn new(content: &'a Content, expected: u64) -> Self {
        Self {
            content,
            offset: 0,
            expected,
        }
    }

    /// The next bytes of the stream.
    pub fn take(&mut self, data: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.offset + data.len() as u64 <= self.expected,
            "more bytes than the {} sent",
            self.expected
        );
        anyhow::ensure!(
            self.content.matches(self.offset, data),
            "the bytes at offset {} differ from what was sent",
            self.offset
        );
        self.offset += data.len() as u64;
        Ok(())
    }

    /// The stream ended: all of it arrived.
    pub fn done(&self) -> anyhow::Result<u64> {
        anyhow::ensure!(
            self.offset == self.expected,
            "{} bytes arrived of the {} sent",
            self.offset,
            self.expected
        );
        Ok(self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_fill_and_check_across_block_ends() {
        let content = Content::new(9);
        let total = 3 * BLOCK as u64 + 11;
        let mut data = vec![0u8; total as usize];
        content.fill(0, &mut data);
        let mut checker = Checker::new(&content, total);
        for chunk in data.chunks(65_537) {
            checker.take(chunk).expect("in order");
        }
        assert_eq!(checker.done().expect("complete"), total);
        data[BLOCK + 3] ^= 1;
        let mut checker = Checker::new(&content, total);
        assert!(data.chunks(4096).any(|chunk| checker.take(chunk).is_err()));
    }
}
