//! NumPy `.npy` and `.npz` files to and from [`Tensor`]s (calibration data, test inputs).
//!
//! Supported: format versions 1.0, 2.0 and 3.0; C order; little-endian or byte-order-free dtypes
//! `f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1`. Fortran order and big-endian data are refused with an
//! error that names the file. bf16 (and f8, sub-byte and string types) have no `.npy` dtype:
//! writing them is refused rather than silently widened, so a file always reads back as the
//! type it was written from; convert to f32 first if that is what you want.
//!
//! `.npy` files are memory-mapped: the tensor's bytes borrow the map, no copy is made.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use bytes::Bytes;

use crate::dtype::DataType;
use crate::tensor::{Tensor, TensorData, TensorError, element_count};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Why a `.npy` / `.npz` file could not be read or written. `file` names the file (and the
/// archive member, as `archive.npz:member`).
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{file}: {source}")]
    Io { file: String, source: io::Error },
    #[error("{file}: not a .npy file (missing the \\x93NUMPY magic)")]
    BadMagic { file: String },
    #[error("{file}: unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are)")]
    Version { file: String, major: u8, minor: u8 },
    #[error("{file}: malformed .npy header: {reason}")]
    Header { file: String, reason: String },
    #[error("{file}: Fortran-order arrays are not supported; save a C-order array (np.ascontiguousarray)")]
    FortranOrder { file: String },
    #[error(
        "{file}: big-endian dtype '{descr}' is not supported; save little-endian data (arr.astype(arr.dtype.newbyteorder('<')))"
    )]
    BigEndian { file: String, descr: String },
    #[error("{file}: unsupported dtype '{descr}' (supported: f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1)")]
    Dtype { file: String, descr: String },
    #[error("{file}: shape {dims:?} of '{descr}' needs {expected} data bytes but the file has {actual}")]
    Size { file: String, descr: String, dims: Vec<usize>, expected: u64, actual: u64 },
    #[error("{file}: cannot write a {dtype} tensor: .npy has no {dtype} dtype (convert it, e.g. to f32)")]
    Unwritable { file: String, dtype: DataType },
    #[error("{file}: {source}")]
    Tensor { file: String, source: TensorError },
    #[error("{file}: bad .npz archive: {reason}")]
    Zip { file: String, reason: String },
}

/// The `.npy` descr (without byte order) of a type, if it has one.
fn descr_of(dtype: DataType) -> Option<&'static str> {
    use DataType as D;
    Some(match dtype {
        D::F16 => "<f2",
        D::F32 => "<f4",
        D::F64 => "<f8",
        D::I8 => "|i1",
        D::I16 => "<i2",
        D::I32 => "<i4",
        D::I64 => "<i8",
        D::U8 => "|u1",
        D::U16 => "<u2",
        D::U32 => "<u4",
        D::U64 => "<u8",
        D::Bool => "|b1",
        _ => return None,
    })
}

/// Parse a descr such as `<f4`, `|u1`, `=i8`.
fn dtype_of(file: &str, descr: &str) -> Result<DataType, NpyError> {
    use DataType as D;
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('|', descr),
    };
    let dtype = match code {
        "f2" | "e" => D::F16,
        "f4" | "f" => D::F32,
        "f8" | "d" => D::F64,
        "i1" | "b" => D::I8,
        "i2" | "h" => D::I16,
        "i4" | "i" => D::I32,
        "i8" | "q" => D::I64,
        "u1" | "B" => D::U8,
        "u2" | "H" => D::U16,
        "u4" | "I" => D::U32,
        "u8" | "Q" => D::U64,
        "b1" | "?" => D::Bool,
        _ => {
            return Err(NpyError::Dtype { file: file.to_string(), descr: descr.to_string() });
        }
    };
    let single_byte = matches!(dtype, D::I8 | D::U8 | D::Bool);
    let big = order == '>' || (order == '=' && cfg!(target_endian = "big"));
    if big && !single_byte {
        return Err(NpyError::BigEndian { file: file.to_string(), descr: descr.to_string() });
    }
    Ok(dtype)
}

/// A parsed header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    dims: Vec<usize>,
}

/// A token of the Python literal the header is written in.
#[derive(Debug, PartialEq)]
enum Tok {
    Str(String),
    Int(u64),
    Ident(String),
    Punct(char),
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '{' | '}' | '(' | ')' | '[' | ']' | ':' | ',' => {
                toks.push(Tok::Punct(c));
                chars.next();
            }
            '\'' | '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, ch)) => s.push(ch),
                        None => return Err("unterminated string".into()),
                    }
                }
                toks.push(Tok::Str(s));
            }
            '0'..='9' => {
                let mut end = i;
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_ascii_digit() {
                        end = j + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                // A trailing `L` is how Python 2 wrote longs.
                if let Some(&(_, 'L')) = chars.peek() {
                    chars.next();
                }
                let n = text[i..end].parse::<u64>().map_err(|_| format!("number {} too large", &text[i..end]))?;
                toks.push(Tok::Int(n));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i;
                while let Some(&(j, d)) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' {
                        end = j + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                toks.push(Tok::Ident(text[i..end].to_string()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(toks)
}

fn parse_header(text: &str) -> Result<Header, String> {
    let toks = tokenize(text)?;
    let mut it = toks.into_iter().peekable();
    let expect = |t: Option<Tok>, want: char| match t {
        Some(Tok::Punct(c)) if c == want => Ok(()),
        other => Err(format!("expected '{want}', found {other:?}")),
    };
    expect(it.next(), '{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        match it.next() {
            Some(Tok::Punct('}')) => break,
            Some(Tok::Str(key)) => {
                expect(it.next(), ':')?;
                match key.as_str() {
                    "descr" => match it.next() {
                        Some(Tok::Str(s)) => descr = Some(s),
                        other => {
                            return Err(format!(
                                "descr must be a string, found {other:?} (structured dtypes are not supported)"
                            ));
                        }
                    },
                    "fortran_order" => match it.next() {
                        Some(Tok::Ident(b)) if b == "True" => fortran = Some(true),
                        Some(Tok::Ident(b)) if b == "False" => fortran = Some(false),
                        other => {
                            return Err(format!("fortran_order must be True or False, found {other:?}"));
                        }
                    },
                    "shape" => {
                        expect(it.next(), '(')?;
                        let mut dims = Vec::new();
                        loop {
                            match it.next() {
                                Some(Tok::Punct(')')) => break,
                                Some(Tok::Int(n)) => {
                                    dims.push(usize::try_from(n).map_err(|_| format!("dimension {n} too large"))?);
                                    match it.next() {
                                        Some(Tok::Punct(',')) => {}
                                        Some(Tok::Punct(')')) => break,
                                        other => {
                                            return Err(format!("expected ',' or ')' in shape, found {other:?}"));
                                        }
                                    }
                                }
                                other => return Err(format!("bad shape entry {other:?}")),
                            }
                        }
                        shape = Some(dims);
                    }
                    other => return Err(format!("unknown key '{other}'")),
                }
                match it.next() {
                    Some(Tok::Punct(',')) => {}
                    Some(Tok::Punct('}')) => break,
                    other => return Err(format!("expected ',' or '}}', found {other:?}")),
                }
            }
            other => return Err(format!("expected a key, found {other:?}")),
        }
    }
    if let Some(extra) = it.next() {
        return Err(format!("unexpected {extra:?} after the header dict"));
    }
    Ok(Header {
        descr: descr.ok_or("missing 'descr'")?,
        fortran_order: fortran.ok_or("missing 'fortran_order'")?,
        dims: shape.ok_or("missing 'shape'")?,
    })
}

/// Split a `.npy` image into its header and the offset of its data.
fn read_preamble(file: &str, bytes: &[u8]) -> Result<(Header, usize), NpyError> {
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err(NpyError::BadMagic { file: file.to_string() });
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let header_err = |reason: String| NpyError::Header { file: file.to_string(), reason };
    let (len_size, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => {
            return Err(NpyError::Version { file: file.to_string(), major, minor });
        }
    };
    let start = 8 + len_size;
    if bytes.len() < start {
        return Err(header_err("file ends inside the header length".into()));
    }
    let header_len = if len_size == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| header_err(format!("header length {header_len} runs past the end of the file")))?;
    let raw = &bytes[start..end];
    let text = if utf8 {
        std::str::from_utf8(raw).map_err(|_| header_err("header is not UTF-8".into()))?.to_string()
    } else {
        raw.iter().map(|&b| b as char).collect()
    };
    let header = parse_header(&text).map_err(header_err)?;
    Ok((header, end))
}

/// Decode a `.npy` image held in memory; `file` names it in errors.
pub fn decode_npy(file: &str, bytes: Bytes) -> Result<Tensor, NpyError> {
    let (header, offset) = read_preamble(file, &bytes)?;
    let dtype = dtype_of(file, &header.descr)?;
    if header.fortran_order && header.dims.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(NpyError::FortranOrder { file: file.to_string() });
    }
    let actual = (bytes.len() - offset) as u64;
    let expected = element_count(&header.dims).and_then(|n| dtype.storage_bytes(n));
    if expected != Some(actual) {
        return Err(NpyError::Size {
            file: file.to_string(),
            descr: header.descr,
            dims: header.dims,
            expected: expected.unwrap_or(u64::MAX),
            actual,
        });
    }
    Tensor::new(dtype, header.dims, bytes.slice(offset..))
        .map_err(|source| NpyError::Tensor { file: file.to_string(), source })
}

/// Read a `.npy` file (memory-mapped, no copy).
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let file = path.display().to_string();
    let io_err = |source| NpyError::Io { file: file.clone(), source };
    let f = File::open(path).map_err(io_err)?;
    let len = f.metadata().map_err(io_err)?.len();
    let bytes = if len == 0 {
        Bytes::new()
    } else {
        // SAFETY: the map is read-only; Kiln does not modify input files while it runs, and a file
        // changed underneath by another process is outside what any reader can guard against.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err)?;
        Bytes::from_owner(map)
    };
    decode_npy(&file, bytes)
}

/// Encode a tensor as a version 1.0 `.npy` image (2.0 when the header needs it).
pub fn encode_npy(file: &str, tensor: &Tensor) -> Result<Vec<u8>, NpyError> {
    let unwritable = || NpyError::Unwritable { file: file.to_string(), dtype: tensor.dtype() };
    let descr = descr_of(tensor.dtype()).ok_or_else(unwritable)?;
    let TensorData::Packed(data) = tensor.data() else {
        return Err(unwritable());
    };
    let shape = match tensor.dims() {
        [d] => format!("({d},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad with spaces so that the data starts on a 64-byte boundary; end with a newline.
    let pad = |prefix: usize| {
        let unpadded = prefix + dict.len() + 1;
        unpadded.div_ceil(64) * 64 - prefix
    };
    let mut header_len = pad(10);
    let (major, prefix) = if header_len <= u16::MAX as usize {
        (1u8, 10)
    } else {
        header_len = pad(12);
        (2u8, 12)
    };
    let mut out = Vec::with_capacity(prefix + header_len + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + header_len - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(data);
    Ok(out)
}

/// Write a tensor to a `.npy` file.
pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<(), NpyError> {
    let file = path.display().to_string();
    let bytes = encode_npy(&file, tensor)?;
    let io_err = |source| NpyError::Io { file: file.clone(), source };
    let mut f = File::create(path).map_err(io_err)?;
    f.write_all(&bytes).map_err(io_err)?;
    f.flush().map_err(io_err)
}

/// Read every array of a `.npz` archive, in archive order. Names lose their `.npy` suffix.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, NpyError> {
    let file = path.display().to_string();
    let f = File::open(path).map_err(|source| NpyError::Io { file: file.clone(), source })?;
    let zip_err = |e: zip::result::ZipError| NpyError::Zip { file: file.clone(), reason: e.to_string() };
    let mut archive = zip::ZipArchive::new(io::BufReader::new(f)).map_err(zip_err)?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().map_err(zip_err)?.into_owned();
        let member = format!("{file}:{name}");
        let declared = entry.size();
        // Grow with the data actually read, never by the declared size alone.
        let mut data = Vec::new();
        (&mut entry)
            .take(declared.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|source| NpyError::Io { file: member.clone(), source })?;
        if data.len() as u64 != declared {
            return Err(NpyError::Zip {
                file: file.clone(),
                reason: format!("member {name} holds {} bytes but declares {declared}", data.len()),
            });
        }
        let tensor = decode_npy(&member, Bytes::from(data))?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.push((key, tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn round_trip(t: &Tensor) -> Tensor {
        let bytes = encode_npy("t.npy", t).unwrap();
        assert_eq!(bytes.len() % 64, t.byte_size() as usize % 64, "data starts on a 64-byte boundary");
        decode_npy("t.npy", Bytes::from(bytes)).unwrap()
    }

    #[test]
    fn every_dtype_round_trips() {
        let cases = vec![
            Tensor::from_slice(vec![2, 3], &[1.5f32, -2.0, 0.0, 3.25, f32::MAX, f32::MIN_POSITIVE]).unwrap(),
            Tensor::from_slice(vec![2], &[1.5f64, -1e300]).unwrap(),
            Tensor::from_slice(vec![3], &[f16::from_f32(1.0), f16::from_f32(-0.5), f16::INFINITY]).unwrap(),
            Tensor::from_slice(vec![2], &[-128i8, 127]).unwrap(),
            Tensor::from_slice(vec![2], &[-3i16, 300]).unwrap(),
            Tensor::from_slice(vec![1, 2], &[-3i32, 70000]).unwrap(),
            Tensor::from_slice(vec![2], &[i64::MIN, i64::MAX]).unwrap(),
            Tensor::from_slice(vec![2], &[0u8, 255]).unwrap(),
            Tensor::from_slice(vec![2], &[0u16, 65535]).unwrap(),
            Tensor::from_slice(vec![2], &[0u32, u32::MAX]).unwrap(),
            Tensor::from_slice(vec![2], &[0u64, u64::MAX]).unwrap(),
            Tensor::from_slice(vec![2, 1], &[true, false]).unwrap(),
            Tensor::scalar(7.0f32),
            Tensor::from_slice::<f32>(vec![0, 4], &[]).unwrap(),
        ];
        for t in cases {
            assert_eq!(round_trip(&t), t);
        }
    }

    #[test]
    fn files_round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let t = Tensor::from_slice(vec![3, 2], &[1i64, 2, 3, 4, 5, 6]).unwrap();
        write_npy(&path, &t).unwrap();
        assert_eq!(read_npy(&path).unwrap(), t);
    }

    #[test]
    fn reads_what_numpy_writes() {
        // np.save of np.arange(3, dtype='<i2'): the exact header numpy 1.x/2.x writes.
        let mut b = b"\x93NUMPY\x01\x00v\x00{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }".to_vec();
        b.resize(127, b' ');
        b.push(b'\n');
        b.extend_from_slice(&[0, 0, 1, 0, 2, 0]);
        let t = decode_npy("n.npy", Bytes::from(b)).unwrap();
        assert_eq!(t.to_vec::<i16>().unwrap(), vec![0, 1, 2]);
        // Version 3.0 (UTF-8 header), double quotes, scalar shape.
        let dict = "{\"descr\": \"|b1\", \"fortran_order\": False, \"shape\": ()}\n";
        let mut b = b"\x93NUMPY\x03\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.push(1);
        let t = decode_npy("s.npy", Bytes::from(b)).unwrap();
        assert_eq!(t.to_vec::<bool>().unwrap(), vec![true]);
    }

    fn with_header(version: u8, dict: &str, data: &[u8]) -> Bytes {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[version, 0]);
        if version == 1 {
            b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(dict.as_bytes());
        b.extend_from_slice(data);
        Bytes::from(b)
    }

    #[test]
    fn malformed_files_are_refused_with_the_file_name() {
        let check = |bytes: Bytes, want: &str| {
            let err = decode_npy("bad.npy", bytes).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("bad.npy: "), "{text}");
            assert!(text.contains(want), "{text} should contain {want}");
        };
        check(Bytes::from_static(b"PK\x03\x04"), "magic");
        check(Bytes::from_static(b"\x93NUMPY\x04\x00\x00\x00"), "version 4.0");
        check(Bytes::from_static(b"\x93NUMPY\x01\x00\xff\x00{}"), "runs past the end");
        check(Bytes::from_static(b"\x93NUMPY\x02\x00\xff\xff\xff\xff{}"), "runs past the end");
        check(Bytes::from_static(b"\x93NUMPY\x01\x00"), "header length");
        check(with_header(1, "{'descr': '<f4', 'shape': (1,)}", &[0; 4]), "missing 'fortran_order'");
        check(with_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,3}", &[]), "shape");
        check(with_header(1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': ()}", &[0; 4]), "True or False");
        check(with_header(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2)}", &[0; 16]), "Fortran");
        check(with_header(2, "{'descr': '>f4', 'fortran_order': False, 'shape': (1,)}", &[0; 4]), "big-endian");
        check(with_header(1, "{'descr': '<U3', 'fortran_order': False, 'shape': (1,)}", &[0; 12]), "dtype '<U3'");
        check(with_header(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", &[]), "structured");
        check(with_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &[0; 20]), "needs 24");
        // A huge shape is caught before anything is allocated.
        let huge = "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }";
        check(with_header(1, huge, &[0; 8]), "needs");
        check(
            with_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}", &[]),
            "too large",
        );
        check(with_header(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", &[0; 4]), "unexpected");
    }

    #[test]
    fn single_byte_and_fortran_edge_cases_are_accepted() {
        // '>' on a single-byte type has no meaning; Fortran order of a vector is C order.
        let t = decode_npy("a.npy", with_header(1, "{'descr': '>u1', 'fortran_order': True, 'shape': (2,)}", &[1, 2]))
            .unwrap();
        assert_eq!(t.to_vec::<u8>().unwrap(), vec![1, 2]);
    }

    #[test]
    fn types_without_a_npy_dtype_are_refused() {
        let bf = Tensor::from_slice(vec![1], &[half::bf16::from_f32(1.0)]).unwrap();
        let err = encode_npy("w.npy", &bf).unwrap_err();
        assert!(err.to_string().contains("w.npy") && err.to_string().contains("bf16"), "{err}");
        let s = Tensor::from_strings(vec![1], vec![Bytes::from_static(b"x")]).unwrap();
        assert!(encode_npy("w.npy", &s).is_err());
    }

    #[test]
    fn npz_members_in_archive_order() {
        use zip::write::SimpleFileOptions;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let a = Tensor::from_slice(vec![2], &[1.0f32, 2.0]).unwrap();
        let b = Tensor::from_slice(vec![1, 3], &[1i64, 2, 3]).unwrap();
        {
            let mut w = zip::ZipWriter::new(File::create(&path).unwrap());
            let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            let deflated = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            w.start_file("zeta.npy", stored).unwrap();
            w.write_all(&encode_npy("", &a).unwrap()).unwrap();
            w.start_file("alpha.npy", deflated).unwrap();
            w.write_all(&encode_npy("", &b).unwrap()).unwrap();
            w.finish().unwrap();
        }
        let got = read_npz(&path).unwrap();
        assert_eq!(got, vec![("zeta".to_string(), a), ("alpha".to_string(), b)]);

        let bad = dir.path().join("bad.npz");
        {
            let mut w = zip::ZipWriter::new(File::create(&bad).unwrap());
            w.start_file("x.npy", SimpleFileOptions::default()).unwrap();
            w.write_all(b"not npy").unwrap();
            w.finish().unwrap();
        }
        let err = read_npz(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.npz:x.npy"), "{err}");
        std::fs::write(&bad, b"garbage").unwrap();
        assert!(read_npz(&bad).unwrap_err().to_string().contains("bad.npz"));
    }
}
