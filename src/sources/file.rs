//! A text file as one source partition of lines, read in parallel.
//!
//! The file is cut into chunks of `chunk_bytes`; a line belongs to the chunk its first byte
//! lies in. Chunk `c` goes to worker `c % workers`, so in round `r` every worker reads chunk
//! `r * workers + index`: the workers move through the file together, which keeps the event
//! time span in flight (and so the open panes) small. The chunks are consecutive batches of a
//! single partition, so lateness is judged in file order whatever the number of workers.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use memchr::memchr;

use super::{Batch, Line, LineBatch, Lines, Share, Source};

/// The default chunk: large enough that the per-round barrier costs nothing, small enough that
/// a round's events fit in cache-friendly buffers.
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 20;

/// What [`FileSource::open`] needs.
#[derive(Debug, Clone)]
pub struct FileOptions {
    pub path: PathBuf,
    /// Bytes per chunk (the unit of a round; see the module documentation).
    pub chunk_bytes: u64,
    /// The file's first line is a header, not a record (it is skipped, but counted in line numbers).
    pub header: bool,
    /// Longer lines are cut to this many bytes (their full length is kept, for rejecting them).
    pub max_line_bytes: usize,
}

/// One worker's view of an input file.
pub struct FileSource {
    path: PathBuf,
    file: File,
    len: u64,
    header: bool,
    max_line_bytes: usize,
    chunk_bytes: u64,
    worker: u64,
    workers: u64,
    next_chunk: u64,
}

impl FileSource {
    /// Reads `buf.len()` bytes at `offset`, fewer only at the end of the file.
    fn read_at(&self, offset: u64, buf: &mut Vec<u8>, want: usize) -> Result<()> {
        let start = buf.len();
        buf.resize(start + want, 0);
        let mut filled = 0;
        while filled < want {
            let n = self
                .file
                .read_at(&mut buf[start + filled..], offset + filled as u64)
                .with_context(|| format!("cannot read {}", self.path.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(start + filled);
        Ok(())
    }

    /// Reads chunk `index`: every line whose first byte lies in it.
    fn read_chunk(&self, index: u64) -> Result<LineBatch> {
        let begin = index * self.chunk_bytes;
        let end = (begin + self.chunk_bytes).min(self.len);
        let mut batch = Batch { partition: 0, sequence: index, records: Lines::default() };
        // Read one byte before the chunk too, to see whether a line starts at `begin`.
        let read_from = begin.saturating_sub(1);
        let mut text = Vec::with_capacity((end - read_from) as usize + 256);
        self.read_at(read_from, &mut text, (end - read_from) as usize)?;
        let mut pos = if index == 0 {
            0
        } else {
            match memchr(b'\n', &text) {
                Some(newline) => newline + 1,
                None => return Ok(batch), // a line longer than the chunk started before it
            }
        };
        // Lines starting before `end`; the last may run past it.
        let owned_end = (end - read_from) as usize;
        while pos < owned_end {
            let (mut line_end, mut full_len, next) = match memchr(b'\n', &text[pos..]) {
                Some(n) => (pos + n, n, pos + n + 1),
                None => {
                    // The line continues past what was read: read on to its newline or the end.
                    let (kept, full_len) = self.read_line_tail(read_from, &mut text, pos)?;
                    (pos + kept, full_len, text.len())
                }
            };
            if line_end > pos && line_end == pos + full_len && text[line_end - 1] == b'\r' {
                line_end -= 1;
                full_len -= 1;
            }
            let cut_end = line_end.min(pos + self.max_line_bytes);
            batch.records.lines.push(Line { start: pos, end: cut_end, full_len });
            pos = next;
        }
        if index == 0 && self.header && !batch.records.lines.is_empty() {
            batch.records.lines.remove(0);
            batch.records.skipped_lines = 1;
        }
        batch.records.text = text;
        Ok(batch)
    }

    /// Reads the rest of the line starting at `text[pos..]` (which has no newline yet), keeping
    /// at most `max_line_bytes + 1` bytes of it. Returns (kept length, full length).
    fn read_line_tail(&self, read_from: u64, text: &mut Vec<u8>, pos: usize) -> Result<(usize, usize)> {
        let mut full_len = text.len() - pos;
        let mut offset = read_from + text.len() as u64;
        text.truncate(pos + full_len.min(self.max_line_bytes + 1));
        let mut block = Vec::with_capacity(64 * 1024);
        loop {
            block.clear();
            self.read_at(offset, &mut block, 64 * 1024)?;
            if block.is_empty() {
                break;
            }
            let (piece, done) = match memchr(b'\n', &block) {
                Some(n) => (&block[..n], true),
                None => (&block[..], false),
            };
            let room = (self.max_line_bytes + 1).saturating_sub(text.len() - pos);
            text.extend_from_slice(&piece[..piece.len().min(room)]);
            full_len += piece.len();
            offset += block.len() as u64;
            if done {
                break;
            }
        }
        Ok((text.len() - pos, full_len))
    }
}

impl Source for FileSource {
    type Options = FileOptions;
    type Records = Lines;
    /// A line number (1 is the first line).
    type Position = u64;

    /// Opens the file for reader `share`; a file is read whole, so `resume` must be empty.
    fn open(options: &FileOptions, share: Share, resume: &BTreeMap<u32, u64>) -> Result<Self> {
        let path = &options.path;
        if let Some((_, line)) = resume.first_key_value() {
            bail!("{}: a file is read from its beginning; it cannot resume at line {line}", path.display());
        }
        let file = File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("cannot stat input {}", path.display()))?.len();
        Ok(FileSource {
            path: path.to_path_buf(),
            file,
            len,
            header: options.header,
            max_line_bytes: options.max_line_bytes,
            chunk_bytes: options.chunk_bytes.max(1),
            worker: share.index as u64,
            workers: share.count as u64,
            next_chunk: share.index as u64,
        })
    }

    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }

    fn read_round(&mut self) -> Result<Option<Vec<LineBatch>>> {
        let chunks = self.len.div_ceil(self.chunk_bytes);
        if self.next_chunk >= chunks {
            return Ok(None);
        }
        let batch = self.read_chunk(self.next_chunk)?;
        self.next_chunk += self.workers;
        Ok(Some(vec![batch]))
    }

    fn progress(&self) -> (u64, u64) {
        // Every worker moves through the file at the same pace, so one worker's position
        // stands for all.
        let done = (self.next_chunk - self.worker) * self.chunk_bytes;
        (done.min(self.len), self.len)
    }
}

/// The first line of the file at `path` (without its newline or a `\r` before it), read up to
/// `max` bytes; `None` for an empty file.
pub fn first_line(path: &Path, max: usize) -> Result<Option<Vec<u8>>> {
    let file = File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
    let mut head = vec![0u8; max];
    let n = file.read_at(&mut head, 0).with_context(|| format!("cannot read {}", path.display()))?;
    head.truncate(n);
    if head.is_empty() {
        return Ok(None);
    }
    let line_end = memchr(b'\n', &head).unwrap_or(head.len());
    head.truncate(line_end);
    if head.last() == Some(&b'\r') {
        head.pop();
    }
    Ok(Some(head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MAX_LINE_BYTES: usize = 4096;

    /// All lines of a file, as each worker count and chunk size reads them, in file order.
    fn read_all(content: &[u8], header: bool, chunk: u64, workers: usize) -> Vec<(String, usize)> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        let mut by_chunk = Vec::new();
        for worker in 0..workers {
            let options =
                FileOptions { path: file.path().into(), chunk_bytes: chunk, header, max_line_bytes: MAX_LINE_BYTES };
            let mut source = FileSource::open(&options, Share::new(worker, workers), &BTreeMap::new()).unwrap();
            while let Some(batch) = source.read_round().unwrap().and_then(|mut b| b.pop()) {
                let lines: Vec<_> = batch
                    .records
                    .lines
                    .iter()
                    .map(|l| (String::from_utf8_lossy(batch.text_of(l)).into_owned(), l.full_len))
                    .collect();
                by_chunk.push((batch.sequence, lines));
            }
        }
        by_chunk.sort();
        by_chunk.into_iter().flat_map(|(_, lines)| lines).collect()
    }

    #[test]
    fn every_line_once_for_any_chunking() {
        let long = "x".repeat(10_000);
        let content = format!("header,line\na,1\r\n\nbb,2\n{long}\nccc,3");
        let expected: Vec<(String, usize)> = vec![
            ("a,1".into(), 3),
            ("".into(), 0),
            ("bb,2".into(), 4),
            (long[..MAX_LINE_BYTES].into(), 10_000),
            ("ccc,3".into(), 5),
        ];
        for chunk in [1, 2, 3, 7, 64, 4096, 1 << 20] {
            for workers in [1, 2, 3] {
                assert_eq!(
                    read_all(content.as_bytes(), true, chunk, workers),
                    expected,
                    "chunk {chunk}, {workers} workers"
                );
            }
        }
    }

    #[test]
    fn a_trailing_newline_makes_no_extra_line() {
        assert_eq!(read_all(b"{}\n{}\n", false, 3, 2).len(), 2);
        assert_eq!(read_all(b"", false, 3, 2).len(), 0);
    }

    #[test]
    fn first_line_without_its_line_end() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"ad,ts\r\n1,2\n").unwrap();
        assert_eq!(first_line(file.path(), 64).unwrap(), Some(b"ad,ts".to_vec()));
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(first_line(empty.path(), 64).unwrap(), None);
    }
}
