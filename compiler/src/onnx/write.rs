//! Atomic, streaming file output: a temporary file in the target's folder, renamed into
//! place on commit. Protobuf messages and tensor data are streamed, never assembled in memory.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use bytes::BufMut;
use bytes::buf::UninitSlice;
use prost::Message;
use sha2::{Digest, Sha256};

use super::error::OnnxError;
use crate::tensor::Tensor;

const CHUNK: usize = 1 << 20;

/// A file that appears at its path only when committed.
pub struct AtomicFile {
    target: PathBuf,
    tmp: tempfile::NamedTempFile,
    out: BufWriter<Digesting>,
    pos: u64,
}

/// The file under the buffer, hashing what reaches it when asked to (so a digest of what was
/// written needs no second read of the file).
struct Digesting {
    file: File,
    sha256: Option<Sha256>,
}

impl Write for Digesting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(h) = &mut self.sha256 {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl AtomicFile {
    /// Starts writing `target` (a temporary file in the same folder until committed).
    pub fn create(target: &Path) -> Result<AtomicFile, OnnxError> {
        AtomicFile::open(target, false)
    }

    /// [`AtomicFile::create`], also hashing the bytes as they are written: [`AtomicFile::commit`]
    /// returns their sha256.
    pub fn create_digested(target: &Path) -> Result<AtomicFile, OnnxError> {
        AtomicFile::open(target, true)
    }

    fn open(target: &Path, digest: bool) -> Result<AtomicFile, OnnxError> {
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut builder = tempfile::Builder::new();
        builder.prefix(".kiln-tmp-");
        // Temp files are private (0600) by default; the output is an ordinary file, so it
        // gets an ordinary file's mode (0666 less the umask).
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let tmp = builder.tempfile_in(dir).map_err(|e| {
            // The OS error names the temp file, which the user never asked for; name the folder.
            if e.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() {
                let message = format!("cannot write here: the folder '{}' does not exist", dir.display());
                return OnnxError::io(target, std::io::Error::new(std::io::ErrorKind::NotFound, message));
            }
            OnnxError::io(target, e)
        })?;
        let file = tmp.reopen().map_err(|e| OnnxError::io(target, e))?;
        let out = BufWriter::with_capacity(CHUNK, Digesting { file, sha256: digest.then(Sha256::new) });
        Ok(AtomicFile { target: target.to_path_buf(), tmp, out, pos: 0 })
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), OnnxError> {
        self.out.write_all(bytes).map_err(|e| OnnxError::io(&self.target, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes zeros up to `offset`.
    pub fn pad_to(&mut self, offset: u64) -> Result<(), OnnxError> {
        let zeros = [0u8; 4096];
        while self.pos < offset {
            let n = (offset - self.pos).min(zeros.len() as u64) as usize;
            self.write_all(&zeros[..n])?;
        }
        Ok(())
    }

    /// Streams a protobuf message into the file.
    pub fn write_message<M: Message>(&mut self, m: &M) -> Result<(), OnnxError> {
        let mut sink = StreamBuf { out: &mut self.out, buf: Vec::with_capacity(CHUNK), error: None, written: 0 };
        let encoded = m.encode(&mut sink);
        sink.flush();
        let written = sink.written;
        if let Some(e) = sink.error.take() {
            return Err(OnnxError::io(&self.target, e));
        }
        encoded.map_err(|e| OnnxError::Other { path: self.target.clone(), message: e.to_string() })?;
        self.pos += written;
        Ok(())
    }

    /// Flushes, syncs and renames the file into place. Returns the hex sha256 of the file's
    /// bytes when it was created with [`AtomicFile::create_digested`].
    pub fn commit(self) -> Result<Option<String>, OnnxError> {
        let AtomicFile { target, tmp, out, .. } = self;
        let Digesting { file, sha256 } = out.into_inner().map_err(|e| OnnxError::io(&target, e.into_error()))?;
        file.sync_all().map_err(|e| OnnxError::io(&target, e))?;
        tmp.persist(&target).map_err(|e| OnnxError::io(&target, e.error))?;
        Ok(sha256.map(|h| hex::encode(h.finalize())))
    }
}

/// Writes a tensor's bytes; bytes mapped from a file are copied from the file with reads,
/// so the mapping's pages never become resident in this process.
pub fn write_tensor_bytes(f: &mut AtomicFile, t: &Tensor) -> Result<(), OnnxError> {
    if let Some(region) = t.source() {
        let mut src = File::open(&region.path).map_err(|e| OnnxError::io(&region.path, e))?;
        src.seek(SeekFrom::Start(region.offset)).map_err(|e| OnnxError::io(&region.path, e))?;
        let mut take = src.take(region.length);
        let mut buf = vec![0u8; CHUNK];
        let mut copied = 0u64;
        loop {
            let n = take.read(&mut buf).map_err(|e| OnnxError::io(&region.path, e))?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
            copied += n as u64;
        }
        if copied != region.length {
            return Err(OnnxError::Other {
                path: region.path.clone(),
                message: format!("the file changed while reading: expected {} bytes, read {copied}", region.length),
            });
        }
        return Ok(());
    }
    match t.bytes() {
        Some(b) => f.write_all(b),
        None => Err(OnnxError::Other {
            path: f.target.clone(),
            message: "string tensors cannot be written as raw data".into(),
        }),
    }
}

/// Encodes a message straight into a writer through a fixed buffer (never the whole message in
/// memory); returns the bytes written.
pub(crate) fn encode_into<W: Write, M: Message>(out: &mut W, m: &M) -> std::io::Result<u64> {
    let mut sink = StreamBuf { out, buf: Vec::with_capacity(CHUNK), error: None, written: 0 };
    // The sink never runs out of room (`remaining_mut` is unbounded), so encoding cannot fail.
    let _ = m.encode(&mut sink);
    sink.flush();
    match sink.error {
        Some(e) => Err(e),
        None => Ok(sink.written),
    }
}

/// A `BufMut` that streams to a writer through a fixed buffer and remembers the first error.
struct StreamBuf<'a, W: Write> {
    out: &'a mut W,
    buf: Vec<u8>,
    error: Option<std::io::Error>,
    written: u64,
}

impl<W: Write> StreamBuf<'_, W> {
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            if self.error.is_none()
                && let Err(e) = self.out.write_all(&self.buf)
            {
                self.error = Some(e);
            }
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
    }
}

// SAFETY: `chunk_mut` hands out the vector's spare capacity, and `advance_mut` only extends
// the length over bytes the caller has initialized, as `BufMut` requires.
unsafe impl<W: Write> BufMut for StreamBuf<'_, W> {
    fn remaining_mut(&self) -> usize {
        usize::MAX / 2
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len();
        // SAFETY: the caller initialized `cnt` bytes of the spare capacity.
        unsafe { self.buf.set_len(len + cnt) };
        if self.buf.len() == self.buf.capacity() {
            self.flush();
        }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush();
        }
        let spare: &mut [MaybeUninit<u8>] = self.buf.spare_capacity_mut();
        UninitSlice::uninit(spare)
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= CHUNK {
            self.flush();
            if self.error.is_none()
                && let Err(e) = self.out.write_all(src)
            {
                self.error = Some(e);
            }
            self.written += src.len() as u64;
        } else {
            if self.buf.len() + src.len() > self.buf.capacity() {
                self.flush();
            }
            self.buf.extend_from_slice(src);
        }
    }
}
