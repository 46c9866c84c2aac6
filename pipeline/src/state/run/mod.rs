//! Cold runs: immutable, sorted files of per-trip state for the log-structured cold tier (an
//! SSTable). A run is written once (at a checkpoint, or by merging older runs) by
//! [`RunBuilder`], then only read: a reader keeps a [`RunIndex`] (Bloom filters and sparse
//! indexes, about 1.5 bytes per entry) and fetches one block per lookup.
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//! trip blocks   each: kind b'T' | count u32 | count × (key u64 | len u32 | value) | crc32 u32
//! id blocks     each: kind b'I' | count u32 | count × (event_key u64 | trip_key u64) | crc32 u32
//! footer        format u32 | trips u64 | ids u64 | data_len u64
//!               trip index: n u64 | n × (first_key u64 | last_key u64 | offset u64 | len u64)
//!               id index:   the same
//!               trip Bloom: probes u32 | blocks u64 | blocks × 8 × u64
//!               id Bloom:   the same
//!               crc32 u32 (of the footer's bytes before it)
//! trailer       footer_len u64 | format u32 | crc32 u32 (of the 12 bytes before it) | b"RECONRUN"
//! ```
//!
//! Blocks start at offset 0 and are contiguous; entries in a block, and blocks in a section, are
//! sorted by key (trips with equal keys in insertion order; duplicate id pairs dropped). A block
//! closes before it would pass 32 KiB, except that **equal keys are never split across
//! blocks**: a block may exceed the target by one run of equal keys (hash collisions are rare
//! and small), so [`RunIndex::trip_block`] always names exactly one block. The index records
//! each block's first *and last* key, so a key between two blocks is answered without I/O.
//! CRCs (CRC-32, `crc32fast`) cover each block, the footer and the trailer; the trailer also
//! carries the format, so a reader refuses a newer file before parsing its footer. Reading:
//! fetch the last [`TRAILER_LEN`] bytes, [`footer_len`], fetch the footer, [`RunIndex::parse`],
//! and check [`RunIndex::file_len`] against the object's length.
//!
//! # Bloom filters
//!
//! A small blocked Bloom filter of our own, not a crate: a filter is part of the file, so its
//! hash and probe scheme must be frozen with [`RUN_FORMAT`]. A library that changes its hashing
//! across versions (or seeds it per process, as `fastbloom`'s default SipHash hasher does)
//! would make an upgraded reader answer "absent" for keys that are present: silent data loss.
//! Here a key is mixed with splitmix64 (fixed seed), which picks one 512-bit block (a cache
//! line), and a second mix gives 7 bit positions (9 bits each) inside it; 10 bits per key,
//! about 1% false positives. The golden test pins the bytes.
//!
//! # Untrusted input
//!
//! Every length and count read from a file is checked against the bytes that remain before it
//! is used or allocated for; corrupt input yields [`RunError`], never a panic.

mod bloom;

use std::ops::Range;

use bloom::{BLOOM_BLOCK_WORDS, BLOOM_PROBES, Bloom};

/// Version of the cold run format; written in the footer and the trailer.
pub const RUN_FORMAT: u32 = 1;
/// Bytes of the fixed trailer at the end of every run.
pub const TRAILER_LEN: usize = 24;

const MAGIC: [u8; 8] = *b"RECONRUN";
/// A block closes before it would pass this many bytes (unless one key's entries alone do).
const BLOCK_TARGET: usize = 32 * 1024;
const TRIP_KIND: u8 = b'T';
const ID_KIND: u8 = b'I';
/// Kind byte + entry count.
const BLOCK_HEADER: usize = 5;
const CRC_LEN: usize = 4;
/// Key + value length, before the value bytes.
const TRIP_ENTRY_MIN: usize = 12;
const ID_ENTRY: usize = 16;
/// first, last, offset, len.
const INDEX_ENTRY: usize = 32;
/// The smallest footer: header fields, two empty indexes, two empty filters, the CRC.
const MIN_FOOTER_LEN: usize = 4 + 3 * 8 + 2 * 8 + 2 * (4 + 8) + CRC_LEN;

/// Errors reading a cold run. `what` names the run (the name the caller passed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The bytes are not a well-formed run: bad CRC, bad magic, lengths out of bounds, ...
    #[error("cold run {what} is corrupt: {message}")]
    Corrupt {
        /// The run (file or object name).
        what: String,
        /// What is wrong, and where.
        message: String,
    },
    /// The run was written in a format this build does not read.
    #[error("cold run {what} has format {found}; this build reads format {supported} only")]
    Format {
        /// The run (file or object name).
        what: String,
        /// The format the file declares.
        found: u32,
        /// [`RUN_FORMAT`].
        supported: u32,
    },
}

fn corrupt(name: &str, message: impl Into<String>) -> RunError {
    let (what, message) = (name.to_owned(), message.into());
    RunError::Corrupt { what, message }
}

/// Returns [`RunError::Corrupt`] for run `$name`, with a formatted message, unless `$ok`.
macro_rules! ensure {
    ($ok:expr, $name:expr => $($msg:tt)+) => {
        if !$ok {
            return Err(corrupt($name, format!($($msg)+)));
        }
    };
}

fn check_format(name: &str, found: u32) -> Result<(), RunError> {
    let (what, supported) = (name.to_owned(), RUN_FORMAT);
    (found == RUN_FORMAT).then_some(()).ok_or(RunError::Format {
        what,
        found,
        supported,
    })
}

/// Collects a run's entries in any order; [`RunBuilder::finish`] sorts them and writes the file.
#[derive(Default)]
pub struct RunBuilder {
    trips: Vec<(u64, Vec<u8>)>,
    ids: Vec<(u64, u64)>,
}

impl RunBuilder {
    /// An empty builder.
    pub fn new() -> RunBuilder {
        RunBuilder::default()
    }

    /// Adds a trip under `key` (a hash of its trip id). Entries with equal keys are all kept,
    /// in the order added.
    ///
    /// # Panics
    /// If `value` is 4 GiB or more (the format stores a 32-bit length).
    pub fn trip(&mut self, key: u64, value: Vec<u8>) {
        assert!(
            u32::try_from(value.len()).is_ok(),
            "cold run trip value of {} bytes",
            value.len()
        );
        self.trips.push((key, value));
    }

    /// Records that the trip with key `trip_key` holds the event with key `event_key`.
    /// A pair added twice is stored once.
    pub fn id(&mut self, event_key: u64, trip_key: u64) {
        self.ids.push((event_key, trip_key));
    }

    /// Trips added so far.
    pub fn trips(&self) -> usize {
        self.trips.len()
    }

    /// Id pairs added so far (duplicates included).
    pub fn ids(&self) -> usize {
        self.ids.len()
    }

    /// True when nothing was added (`finish` still gives a valid, empty run).
    pub fn is_empty(&self) -> bool {
        self.trips.is_empty() && self.ids.is_empty()
    }

    /// Sorts the entries and returns the whole file. The same entries added in the same order
    /// give the same bytes.
    pub fn finish(self) -> Vec<u8> {
        let RunBuilder { mut trips, mut ids } = self;
        trips.sort_by_key(|e| e.0); // stable: equal keys keep insertion order
        ids.sort_unstable();
        ids.dedup();

        let mut out = Vec::new();
        let trip_index = write_section(
            &mut out,
            TRIP_KIND,
            &trips,
            |e| e.0,
            |e| TRIP_ENTRY_MIN + e.1.len(),
            |out, e| {
                out.extend_from_slice(&e.0.to_le_bytes());
                out.extend_from_slice(&(e.1.len() as u32).to_le_bytes());
                out.extend_from_slice(&e.1);
            },
        );
        let id_index = write_section(
            &mut out,
            ID_KIND,
            &ids,
            |e| e.0,
            |_| ID_ENTRY,
            |out, e| put(out, &[e.0, e.1]),
        );
        let trip_bloom = Bloom::build(trips.len(), trips.iter().map(|e| e.0));
        let id_bloom = Bloom::build(ids.len(), ids.iter().map(|e| e.0));

        let footer_start = out.len();
        out.extend_from_slice(&RUN_FORMAT.to_le_bytes());
        let counts = [trips.len(), ids.len(), footer_start];
        put(&mut out, &counts.map(|n| n as u64));
        for index in [&trip_index, &id_index] {
            put(&mut out, &[index.len() as u64]);
            for b in index {
                put(&mut out, &[b.first, b.last, b.offset, b.len]);
            }
        }
        for bloom in [&trip_bloom, &id_bloom] {
            out.extend_from_slice(&BLOOM_PROBES.to_le_bytes());
            put(&mut out, &[(bloom.words.len() / BLOOM_BLOCK_WORDS) as u64]);
            put(&mut out, &bloom.words);
        }
        let crc = crc32fast::hash(&out[footer_start..]);
        out.extend_from_slice(&crc.to_le_bytes());

        let trailer_start = out.len();
        put(&mut out, &[(trailer_start - footer_start) as u64]);
        out.extend_from_slice(&RUN_FORMAT.to_le_bytes());
        let crc = crc32fast::hash(&out[trailer_start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&MAGIC);
        out
    }
}

/// Appends little-endian u64s.
fn put(out: &mut Vec<u8>, words: &[u64]) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// Writes sorted `entries` as blocks of one kind; returns their index entries.
fn write_section<T>(
    out: &mut Vec<u8>,
    kind: u8,
    entries: &[T],
    key: impl Fn(&T) -> u64,
    size: impl Fn(&T) -> usize,
    put: impl Fn(&mut Vec<u8>, &T),
) -> Vec<BlockRef> {
    let mut index = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        // Take whole runs of equal keys while they fit (always at least one run).
        let mut bytes = BLOCK_HEADER + CRC_LEN;
        let mut j = i;
        while j < entries.len() {
            let k = key(&entries[j]);
            let (mut end, mut run_bytes) = (j, 0);
            while end < entries.len() && key(&entries[end]) == k {
                run_bytes += size(&entries[end]);
                end += 1;
            }
            if j > i && bytes + run_bytes > BLOCK_TARGET {
                break;
            }
            bytes += run_bytes;
            j = end;
        }
        let block = &entries[i..j];
        let start = out.len();
        out.push(kind);
        let count = u32::try_from(block.len()).expect("a cold run block holds under 2^32 entries");
        out.extend_from_slice(&count.to_le_bytes());
        for e in block {
            put(out, e);
        }
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        index.push(BlockRef {
            first: key(&block[0]),
            last: key(&block[block.len() - 1]),
            offset: start as u64,
            len: (out.len() - start) as u64,
        });
        i = j;
    }
    index
}

/// Returns the footer's length, read from the trailer: the last [`TRAILER_LEN`] bytes of
/// `trailer` (a longer tail of the file may be passed). The footer is the `footer_len` bytes
/// just before the trailer; the caller checks that they lie inside the file.
pub fn footer_len(name: &str, trailer: &[u8]) -> Result<usize, RunError> {
    let n = trailer.len();
    ensure!(n >= TRAILER_LEN, name => "trailer is {n} bytes, expected {TRAILER_LEN}");
    let t = &trailer[n - TRAILER_LEN..];
    ensure!(t[16..] == MAGIC[..], name => "no run magic at the end: truncated, or not a run");
    let (stored, computed) = (u32_at(t, 12), crc32fast::hash(&t[..12]));
    ensure!(stored == computed, name => "trailer CRC {stored:#010x}, computed {computed:#010x}");
    check_format(name, u32_at(t, 8))?;
    let len = u64_at(t, 0);
    let possible = len >= MIN_FOOTER_LEN as u64 && len < isize::MAX as u64;
    ensure!(possible, name => "trailer gives an impossible footer length {len}");
    Ok(len as usize)
}

/// One block's place in the file and its key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockRef {
    first: u64,
    last: u64,
    offset: u64,
    len: u64,
}

impl BlockRef {
    fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.len
    }
}

/// What a reader keeps in memory per run (Bloom filters + sparse indexes; a few bytes per entry).
#[derive(Debug)]
pub struct RunIndex {
    trips: u64,
    ids: u64,
    data_len: u64,
    footer_len: u64,
    trip_blocks: Vec<BlockRef>,
    id_blocks: Vec<BlockRef>,
    trip_bloom: Bloom,
    id_bloom: Bloom,
}

impl RunIndex {
    /// Parses the footer (`footer` = the footer bytes exactly, as located via [`footer_len`]);
    /// checks its CRC, format, and that the blocks it lists tile the data region in key order.
    pub fn parse(name: &str, footer: &[u8]) -> Result<RunIndex, RunError> {
        let body = check_crc(name, footer, "footer")?;
        let mut r = Reader::new(name, "footer", body);
        check_format(name, r.u32("format")?)?;
        let (trips, ids, data_len) = (r.u64("trips")?, r.u64("ids")?, r.u64("data length")?);
        let trip_blocks = read_index(&mut r, "trip", 0)?;
        let id_start = trip_blocks.last().map_or(0, |b| b.offset + b.len);
        let id_blocks = read_index(&mut r, "id", id_start)?;
        let end = id_blocks.last().map_or(id_start, |b| b.offset + b.len);
        ensure!(end == data_len, name => "blocks end at {end}, the data region at {data_len}");
        let trip_bloom = read_bloom(&mut r, "trip")?;
        let id_bloom = read_bloom(&mut r, "id")?;
        r.done()?;
        for (section, count, blocks, bloom) in [
            ("trip", trips, &trip_blocks, &trip_bloom),
            ("id", ids, &id_blocks, &id_bloom),
        ] {
            let ok = count >= blocks.len() as u64 && (count == 0) == bloom.words.is_empty();
            ensure!(ok, name => "{section} count {count} disagrees with its blocks or filter");
        }
        let footer_len = footer.len() as u64;
        Ok(RunIndex {
            trips,
            ids,
            data_len,
            footer_len,
            trip_blocks,
            id_blocks,
            trip_bloom,
            id_bloom,
        })
    }

    /// Trips in the run (entries with equal keys counted separately).
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Distinct (event key, trip key) pairs in the run.
    pub fn ids(&self) -> u64 {
        self.ids
    }

    /// The length the whole file must have (blocks + footer + trailer): a reader compares it with
    /// the object's length to detect a truncated or padded file.
    pub fn file_len(&self) -> u64 {
        self.data_len + self.footer_len + TRAILER_LEN as u64
    }

    /// Bytes this index holds in memory (for a gauge).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + (self.trip_blocks.capacity() + self.id_blocks.capacity())
                * std::mem::size_of::<BlockRef>()
            + (self.trip_bloom.words.capacity() + self.id_bloom.words.capacity()) * 8
    }

    /// None when the Bloom filter (or the key range) says the key is certainly absent; else the
    /// byte range of the one block that would hold it (equal keys never straddle blocks).
    pub fn trip_block(&self, key: u64) -> Option<Range<u64>> {
        locate(&self.trip_blocks, &self.trip_bloom, key)
    }

    /// As [`RunIndex::trip_block`], for the id section: the block that would hold `event_key`.
    pub fn id_block(&self, event_key: u64) -> Option<Range<u64>> {
        locate(&self.id_blocks, &self.id_bloom, event_key)
    }

    /// Byte ranges of all trip blocks, in key order (for merges / full scans).
    pub fn trip_blocks(&self) -> Vec<Range<u64>> {
        self.trip_blocks.iter().map(BlockRef::range).collect()
    }

    /// Byte ranges of all id blocks, in key order.
    pub fn id_blocks(&self) -> Vec<Range<u64>> {
        self.id_blocks.iter().map(BlockRef::range).collect()
    }
}

fn locate(blocks: &[BlockRef], bloom: &Bloom, key: u64) -> Option<Range<u64>> {
    if !bloom.contains(key) {
        return None;
    }
    let i = blocks.partition_point(|b| b.first <= key);
    let b = blocks.get(i.checked_sub(1)?)?;
    (key <= b.last).then(|| b.range())
}

/// Reads one section's sparse index; its blocks must start at `start`, be contiguous, and have
/// strictly increasing, non-overlapping key ranges.
fn read_index(
    r: &mut Reader<'_, '_>,
    section: &str,
    start: u64,
) -> Result<Vec<BlockRef>, RunError> {
    let n = r.u64("block count")?;
    let fits = n <= (r.remaining() / INDEX_ENTRY) as u64;
    ensure!(fits, r.name => "{section} index claims {n} blocks, more than the footer holds");
    let entry = if section == "trip" {
        TRIP_ENTRY_MIN
    } else {
        ID_ENTRY
    };
    let min_len = (BLOCK_HEADER + CRC_LEN + entry) as u64;
    let mut blocks: Vec<BlockRef> = Vec::with_capacity(n as usize);
    let mut expect = start;
    for i in 0..n {
        let (first, last) = (r.u64("first key")?, r.u64("last key")?);
        let (offset, len) = (r.u64("offset")?, r.u64("length")?);
        let (name, at) = (r.name, format!("{section} block {i} of {n}"));
        ensure!(offset == expect, name => "{at} starts at {offset}, expected {expect}");
        ensure!(len >= min_len, name => "{at} is {len} bytes, under the minimum {min_len}");
        let ordered = first <= last && blocks.last().is_none_or(|p| p.last < first);
        ensure!(ordered, name => "{at} has keys {first:#x}..={last:#x}, out of order");
        let end = offset.checked_add(len);
        expect = end.ok_or_else(|| corrupt(name, format!("{at} ends past 2^64")))?;
        blocks.push(BlockRef {
            first,
            last,
            offset,
            len,
        });
    }
    Ok(blocks)
}

fn read_bloom(r: &mut Reader<'_, '_>, section: &str) -> Result<Bloom, RunError> {
    let probes = r.u32("Bloom probe count")?;
    let ok = probes == BLOOM_PROBES;
    ensure!(ok, r.name => "{section} Bloom filter has {probes} probes, expected {BLOOM_PROBES}");
    let blocks = r.u64("Bloom block count")?;
    let fits = blocks <= (r.remaining() / (8 * BLOOM_BLOCK_WORDS)) as u64;
    ensure!(fits, r.name => "{section} Bloom filter claims {blocks} blocks, past the footer");
    let bytes = r.take(blocks as usize * 8 * BLOOM_BLOCK_WORDS, "Bloom filter")?;
    let words = bytes.chunks_exact(8).map(|c| u64_at(c, 0)).collect();
    Ok(Bloom { words })
}

/// Verifies a block's CRC and returns the values stored under `key` (several on a hash
/// collision), in insertion order.
pub fn find_trips(name: &str, block: &[u8], key: u64) -> Result<Vec<Vec<u8>>, RunError> {
    let entries = parse_trips(name, block)?.into_iter();
    Ok(entries
        .filter(|e| e.0 == key)
        .map(|e| e.1.to_vec())
        .collect())
}

/// Verifies the CRC and returns the trip keys holding `event_key`.
pub fn find_ids(name: &str, block: &[u8], event_key: u64) -> Result<Vec<u64>, RunError> {
    let pairs = block_ids(name, block)?.into_iter();
    Ok(pairs.filter(|e| e.0 == event_key).map(|e| e.1).collect())
}

/// Every (key, value) of a trip block, sorted by key (equal keys in insertion order; for merges).
pub fn block_trips(name: &str, block: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, RunError> {
    let entries = parse_trips(name, block)?.into_iter();
    Ok(entries.map(|(k, v)| (k, v.to_vec())).collect())
}

/// Every (event_key, trip_key) of an id block, sorted.
pub fn block_ids(name: &str, block: &[u8]) -> Result<Vec<(u64, u64)>, RunError> {
    let (count, body) = block_body(name, block, ID_KIND)?;
    let (len, want) = (body.len(), count.saturating_mul(ID_ENTRY));
    ensure!(len == want, name => "id block of {count} entries has {len} bytes, expected {want}");
    let pairs: Vec<(u64, u64)> = body
        .chunks_exact(ID_ENTRY)
        .map(|c| (u64_at(c, 0), u64_at(c, 8)))
        .collect();
    let sorted = pairs.windows(2).all(|w| w[0] < w[1]);
    ensure!(sorted, name => "id block entries are not sorted");
    Ok(pairs)
}

fn parse_trips<'a>(name: &str, block: &'a [u8]) -> Result<Vec<(u64, &'a [u8])>, RunError> {
    let (count, body) = block_body(name, block, TRIP_KIND)?;
    let fits = count <= body.len() / TRIP_ENTRY_MIN;
    ensure!(fits, name => "trip block claims {count} entries in {} bytes", body.len());
    let mut r = Reader::new(name, "trip block", body);
    let mut out: Vec<(u64, &[u8])> = Vec::with_capacity(count);
    for _ in 0..count {
        let key = r.u64("key")?;
        let len = r.u32("value length")? as usize;
        let value = r.take(len, "value")?;
        let sorted = out.last().is_none_or(|p| p.0 <= key);
        ensure!(sorted, name => "trip block entries are not sorted");
        out.push((key, value));
    }
    r.done()?;
    Ok(out)
}

/// Checks a block's CRC, kind and entry count; returns the count and the entry bytes.
fn block_body<'a>(name: &str, block: &'a [u8], kind: u8) -> Result<(usize, &'a [u8]), RunError> {
    let what = if kind == TRIP_KIND {
        "trip block"
    } else {
        "id block"
    };
    let n = block.len();
    ensure!(n >= BLOCK_HEADER + CRC_LEN, name => "{what} of {n} bytes is shorter than any block");
    let body = check_crc(name, block, what)?;
    ensure!(body[0] == kind, name => "expected a {what}, found block kind {:#04x}", body[0]);
    let count = u32_at(body, 1) as usize;
    ensure!(count > 0, name => "{what} has no entries");
    Ok((count, &body[BLOCK_HEADER..]))
}

/// Splits off and verifies a trailing CRC-32; returns the bytes it covers.
fn check_crc<'a>(name: &str, bytes: &'a [u8], what: &str) -> Result<&'a [u8], RunError> {
    let n = bytes.len();
    ensure!(n >= CRC_LEN, name => "{what} of {n} bytes has no room for its CRC");
    let (body, crc) = bytes.split_at(n - CRC_LEN);
    let (stored, computed) = (u32_at(crc, 0), crc32fast::hash(body));
    let ok = stored == computed;
    ensure!(ok, name => "{what} CRC {stored:#010x}, computed {computed:#010x} ({n} bytes)");
    Ok(body)
}

/// A bounds-checked cursor over footer or block bytes.
struct Reader<'n, 'a> {
    name: &'n str,
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'n, 'a> Reader<'n, 'a> {
    fn new(name: &'n str, what: &'static str, buf: &'a [u8]) -> Self {
        Reader {
            name,
            what,
            buf,
            pos: 0,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], RunError> {
        let (name, what, pos, left) = (self.name, self.what, self.pos, self.remaining());
        ensure!(n <= left, name => "{what}: {field} at {pos} needs {n} bytes, only {left} left");
        self.pos += n;
        Ok(&self.buf[pos..pos + n])
    }

    fn u32(&mut self, field: &str) -> Result<u32, RunError> {
        Ok(u32_at(self.take(4, field)?, 0))
    }

    fn u64(&mut self, field: &str) -> Result<u64, RunError> {
        Ok(u64_at(self.take(8, field)?, 0))
    }

    /// Every byte must have been read.
    fn done(&self) -> Result<(), RunError> {
        let (what, left) = (self.what, self.remaining());
        ensure!(left == 0, self.name => "{left} unexpected bytes at the end of the {what}");
        Ok(())
    }
}

/// Callers guarantee `at + 4 <= b.len()`.
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Callers guarantee `at + 8 <= b.len()`.
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests;
