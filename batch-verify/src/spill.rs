//! Spill files: how a day of tens of millions of events is verified in bounded memory.
//!
//! Each side streams its rows into `N` bucket files per family, choosing the bucket by a hash
//! of the key the check groups by (event id, trip id, Kafka position, dead-letter key). Every
//! row with a given key lands in the same bucket on both sides, so the checks then load one
//! bucket at a time: memory is about `rows / N`, not `rows`.
//!
//! On-disk format (private to one run, deleted with its temporary directory): a sequence of
//! frames `u32 little-endian length` + postcard bytes of one item.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, VerifyError};

/// Buffer of each bucket writer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Largest frame accepted when reading back (a row is a few hundred bytes).
const FRAME_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// The bucket of a 64-bit key hash.
pub fn bucket_of(hash: u64, buckets: usize) -> usize {
    // Fibonacci hashing spreads FNV's low-entropy high bits.
    let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((u128::from(mixed) * buckets as u128) >> 64) as usize
}

/// Hash of a byte key (FNV-1a, stable across runs).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    recon_schemas::event::fnv1a64(bytes)
}

/// Writes items of type `T` into bucket files `<dir>/<name>-<side>-<bucket>.spill`.
pub struct SpillWriter<T> {
    paths: Vec<PathBuf>,
    writers: Vec<BufWriter<File>>,
    frame: Vec<u8>,
    items: u64,
    bytes: u64,
    _item: PhantomData<fn(&T)>,
}

impl<T: Serialize> SpillWriter<T> {
    /// Creates `buckets` empty files.
    pub fn create(dir: &Path, name: &str, buckets: usize) -> Result<SpillWriter<T>> {
        assert!(buckets > 0, "at least one bucket");
        let mut paths = Vec::with_capacity(buckets);
        let mut writers = Vec::with_capacity(buckets);
        for b in 0..buckets {
            let path = dir.join(format!("{name}-{b:04}.spill"));
            let file = File::create(&path).map_err(|e| spill_err(&path, e))?;
            writers.push(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file));
            paths.push(path);
        }
        Ok(SpillWriter {
            paths,
            writers,
            frame: Vec::with_capacity(512),
            items: 0,
            bytes: 0,
            _item: PhantomData,
        })
    }

    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.writers.len()
    }

    /// Appends `item` to the bucket of `hash`.
    pub fn push(&mut self, hash: u64, item: &T) -> Result<()> {
        self.push_encoded_as(hash, item)
    }

    /// Appends an item of another type that encodes exactly as a `T` (a borrowed twin such as
    /// [`crate::row::TripItemRef`]), saving a copy.
    pub fn push_encoded_as<U: Serialize + ?Sized>(&mut self, hash: u64, item: &U) -> Result<()> {
        let b = bucket_of(hash, self.writers.len());
        self.frame.clear();
        self.frame.extend_from_slice(&[0; 4]);
        let mut frame = std::mem::take(&mut self.frame);
        frame = postcard::to_extend(item, frame).map_err(|e| spill_err(&self.paths[b], e))?;
        let len = u32::try_from(frame.len() - 4).unwrap_or(u32::MAX);
        assert!(len <= FRAME_BYTES_MAX, "a spilled row of {len} bytes");
        frame[..4].copy_from_slice(&len.to_le_bytes());
        self.writers[b]
            .write_all(&frame)
            .map_err(|e| spill_err(&self.paths[b], e))?;
        self.items += 1;
        self.bytes += frame.len() as u64;
        self.frame = frame;
        Ok(())
    }

    /// Items written so far.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Flushes and closes every file.
    pub fn finish(self) -> Result<SpillFiles<T>> {
        for (w, p) in self.writers.into_iter().zip(&self.paths) {
            w.into_inner()
                .map_err(|e| spill_err(p, e.into_error()))?
                .flush()
                .map_err(|e| spill_err(p, e))?;
        }
        Ok(SpillFiles {
            paths: self.paths,
            items: self.items,
            bytes: self.bytes,
            _item: PhantomData,
        })
    }
}

/// Closed bucket files of one writer.
pub struct SpillFiles<T> {
    paths: Vec<PathBuf>,
    /// Items written.
    pub items: u64,
    /// Bytes written.
    pub bytes: u64,
    _item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> SpillFiles<T> {
    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.paths.len()
    }

    /// Appends the items of bucket `b`, in write order, to `out`.
    pub fn read_into(&self, b: usize, out: &mut Vec<T>) -> Result<()> {
        self.read(b, |item| {
            out.push(item);
            Ok(())
        })
    }

    /// Reads bucket `b` back, in write order, into `f`.
    pub fn read(&self, b: usize, mut f: impl FnMut(T) -> Result<()>) -> Result<()> {
        let path = &self.paths[b];
        let file = File::open(path).map_err(|e| spill_err(path, e))?;
        let mut r = BufReader::with_capacity(WRITE_BUFFER_BYTES, file);
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 4];
            match r.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(spill_err(path, e)),
            }
            let len = u32::from_le_bytes(len);
            if len > FRAME_BYTES_MAX {
                return Err(spill_err(
                    path,
                    format!("frame of {len} bytes (corrupt file)"),
                ));
            }
            buf.resize(len as usize, 0);
            r.read_exact(&mut buf).map_err(|e| spill_err(path, e))?;
            let item = postcard::from_bytes(&buf).map_err(|e| spill_err(path, e))?;
            f(item)?;
        }
    }
}

fn spill_err(path: &Path, e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Spill {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_in_their_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpillWriter::<(u64, String)>::create(dir.path(), "t", 8).unwrap();
        for i in 0..1000u64 {
            w.push(hash_bytes(&i.to_le_bytes()), &(i, format!("v{i}")))
                .unwrap();
        }
        let files = w.finish().unwrap();
        assert_eq!(files.items, 1000);
        let mut seen = Vec::new();
        for b in 0..files.buckets() {
            files
                .read(b, |(i, v)| {
                    assert_eq!(bucket_of(hash_bytes(&i.to_le_bytes()), 8), b);
                    assert_eq!(v, format!("v{i}"));
                    seen.push(i);
                    Ok(())
                })
                .unwrap();
        }
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn buckets_are_balanced() {
        let mut counts = [0u32; 16];
        for i in 0..16_000u64 {
            counts[bucket_of(hash_bytes(format!("trip-{i}").as_bytes()), 16)] += 1;
        }
        assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
    }
}
