//! A ring whose header and data a hostile sender wrote: forged positions,
//! capacities, end marks and totals. The receiver never panics, never reads
//! outside its ring, and never reports a stream verified that does not
//! match its end mark.
#![no_main]

use std::os::unix::fs::FileExt as _;

use floki_proto::ring::{self, RingReader};
use libfuzzer_sys::fuzz_target;

/// Header words the sender writes (offsets of the 64-byte lines).
const WORDS: [u64; 7] = [0, 64, 128, 192, 512, 576, 640];

fuzz_target!(|data: &[u8]| {
    let Ok((memory, capacity)) = ring::create(64 << 10) else {
        return;
    };
    let file = std::fs::File::from(memory);
    let mut rest = data;
    for (i, offset) in WORDS.iter().enumerate() {
        let Some((word, tail)) = rest.split_first_chunk::<8>() else {
            break;
        };
        rest = tail;
        // Keep the magic and the capacity valid most of the time, so that
        // the reader gets past them.
        if i < 2 && word[0] % 8 != 0 {
            continue;
        }
        let _ = file.write_all_at(word, *offset);
    }
    let data_len = rest.len().min(capacity as usize);
    let _ = file.write_all_at(&rest[..data_len], ring::HEADER_LEN as u64);
    let Ok((peer, _keep)) = ring::socket_pair() else {
        return;
    };
    let Ok(mut reader) = RingReader::open(file.into(), peer) else {
        return;
    };
    for _ in 0..64 {
        match reader.try_fill() {
            Ok(Some(bytes)) if bytes.is_empty() => return,
            Ok(Some(bytes)) => {
                assert!(bytes.len() <= capacity as usize);
                let n = bytes.len();
                reader.consume_len(n);
            }
            Ok(None) | Err(_) => return,
        }
    }
});
