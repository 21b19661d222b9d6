//! The engine file, format v1: a checksummed header, a section table and 4096-byte aligned
//! section payloads, read into memory once and verified. `docs/engine-format.md` is the specification.

use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::error::{Error, Result};

/// First eight bytes of every engine file.
pub const MAGIC: [u8; 8] = *b"SEGICLEF";
/// Format major version written and read by this runtime.
pub const VERSION_MAJOR: u16 = 1;
/// Newest format minor version this runtime writes: 1.1 adds the CALIB section and the manifest's
/// `calibration` field, 1.2 the baked TensorRT plans (TRT_ENC, TRT_DEC). A file is written with
/// the lowest minor version that describes it (1.0 unless it has one of those sections), so
/// engines without them are byte-identical to 1.0 files.
pub const VERSION_MINOR: u16 = 2;
/// Alignment of every section payload, in bytes.
pub const ALIGNMENT: usize = 4096;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Length of one section-table entry.
pub const ENTRY_LEN: usize = 32;
/// Most sections a file may declare (a bound against absurd counts).
pub const MAX_SECTIONS: usize = 256;

/// Section flag: a reader that does not know this tag must refuse the file.
pub const FLAG_REQUIRED: u32 = 1;

/// Sections every engine file has, each marked [`FLAG_REQUIRED`].
pub const REQUIRED_TAGS: [Tag; 3] = [Tag::MANIFEST, Tag::ENCODER, Tag::DECODER];

/// An eight-byte section tag, ASCII padded with NUL bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub [u8; 8]);

impl Tag {
    /// The JSON manifest (required).
    pub const MANIFEST: Tag = Tag(*b"MANIFEST");
    /// The encoder graph, ONNX bytes (required).
    pub const ENCODER: Tag = Tag(*b"ENCODER\0");
    /// The decoder graph, ONNX bytes (required).
    pub const DECODER: Tag = Tag(*b"DECODER\0");
    /// The model card, UTF-8 Markdown.
    pub const CARD: Tag = Tag(*b"CARD\0\0\0\0");
    /// Default shots per named task.
    pub const SHOTS: Tag = Tag(*b"SHOTS\0\0\0");

    /// Calibrated activation ranges of an int8 engine (JSON), for backends that build their own
    /// int8 plans (TensorRT).
    pub const CALIB: Tag = Tag(*b"CALIB\0\0\0");

    /// The encoder's TensorRT plan for one device, stored with its key (format 1.2).
    pub const TRT_ENCODER: Tag = Tag(*b"TRT_ENC\0");
    /// The decoder's TensorRT plan for one device, stored with its key (format 1.2).
    pub const TRT_DECODER: Tag = Tag(*b"TRT_DEC\0");

    /// Tags this runtime understands.
    pub const KNOWN: [Tag; 8] = [
        Tag::MANIFEST,
        Tag::ENCODER,
        Tag::DECODER,
        Tag::CARD,
        Tag::SHOTS,
        Tag::CALIB,
        Tag::TRT_ENCODER,
        Tag::TRT_DECODER,
    ];

    /// The tag as text, NUL padding removed, other bytes escaped.
    pub fn name(&self) -> String {
        let end = self.0.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        self.0[..end].escape_ascii().to_string()
    }
}

/// One entry of the section table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// What the payload is.
    pub tag: Tag,
    /// Byte offset of the payload in the file, a multiple of [`ALIGNMENT`].
    pub offset: u64,
    /// Payload length in bytes.
    pub length: u64,
    /// CRC-32 (IEEE) of the payload.
    pub crc32: u32,
    /// Bit set of `FLAG_*`.
    pub flags: u32,
}

impl Section {
    fn range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.length) as usize
    }
}

/// Builds an engine file from section payloads.
#[derive(Debug, Default)]
pub struct EngineWriter {
    sections: Vec<(Tag, u32, Vec<u8>)>,
}

impl EngineWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a section; the required sections get [`FLAG_REQUIRED`].
    pub fn section(mut self, tag: Tag, payload: Vec<u8>) -> Self {
        let required = REQUIRED_TAGS.contains(&tag);
        self.sections.push((tag, if required { FLAG_REQUIRED } else { 0 }, payload));
        self
    }

    /// Appends a section with explicit flags.
    pub fn section_with_flags(mut self, tag: Tag, flags: u32, payload: Vec<u8>) -> Self {
        self.sections.push((tag, flags, payload));
        self
    }

    /// Lays the file out in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let table_end = HEADER_LEN + ENTRY_LEN * self.sections.len();
        let mut entries = Vec::with_capacity(self.sections.len());
        let mut cursor = table_end;
        for (tag, flags, payload) in &self.sections {
            let offset = align_up(cursor);
            entries.push(Section {
                tag: *tag,
                offset: offset as u64,
                length: payload.len() as u64,
                crc32: crc32fast::hash(payload),
                flags: *flags,
            });
            cursor = offset + payload.len();
        }
        let file_len = if self.sections.is_empty() { table_end } else { cursor };
        let mut out = vec![0u8; file_len];
        for (entry, (_, _, payload)) in entries.iter().zip(&self.sections) {
            out[entry.range()].copy_from_slice(payload);
        }
        for (i, entry) in entries.iter().enumerate() {
            let e = &mut out[HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN];
            e[0..8].copy_from_slice(&entry.tag.0);
            LE::write_u64(&mut e[8..16], entry.offset);
            LE::write_u64(&mut e[16..24], entry.length);
            LE::write_u32(&mut e[24..28], entry.crc32);
            LE::write_u32(&mut e[28..32], entry.flags);
        }
        let table_crc = crc32fast::hash(&out[HEADER_LEN..table_end]);
        let h = &mut out[..HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        LE::write_u16(&mut h[8..10], VERSION_MAJOR);
        let has = |wanted: &[Tag]| self.sections.iter().any(|(tag, _, _)| wanted.contains(tag));
        let minor = if has(&[Tag::TRT_ENCODER, Tag::TRT_DECODER]) {
            2
        } else if has(&[Tag::CALIB]) {
            1
        } else {
            0
        };
        LE::write_u16(&mut h[10..12], minor);
        LE::write_u32(&mut h[12..16], 0);
        LE::write_u32(&mut h[16..20], self.sections.len() as u32);
        LE::write_u32(&mut h[20..24], ALIGNMENT as u32);
        LE::write_u64(&mut h[24..32], file_len as u64);
        LE::write_u32(&mut h[32..36], table_crc);
        let header_crc = crc32fast::hash(&h[..60]);
        LE::write_u32(&mut h[60..64], header_crc);
        out
    }
}

/// Writes `bytes` to `path` through a temporary file beside it, so that a failure never leaves
/// a half-written engine under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// The verified layout of an engine file: version and section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Header flags (none defined in v1; must be zero).
    pub flags: u32,
    /// The section table, in file order.
    pub sections: Vec<Section>,
}

impl Layout {
    /// Checks every byte of `bytes` (header and table checksums, bounds, alignment, zero padding,
    /// every payload checksum) and returns the section table. `path` only names the file in errors.
    pub fn verify(bytes: &[u8], path: &Path) -> Result<Layout> {
        let corrupt = |what: String| Error::Corrupt { path: path.to_path_buf(), what };
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            return Err(not_an_engine(bytes, path));
        }
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(format!(
                "file is {} bytes, shorter than the {HEADER_LEN}-byte header (truncated?)",
                bytes.len()
            )));
        }
        let h = &bytes[..HEADER_LEN];
        if crc32fast::hash(&h[..60]) != LE::read_u32(&h[60..64]) {
            return Err(corrupt("header checksum mismatch".into()));
        }
        let major = LE::read_u16(&h[8..10]);
        let minor = LE::read_u16(&h[10..12]);
        if major != VERSION_MAJOR {
            return Err(Error::UnsupportedVersion { path: path.to_path_buf(), major, minor, supported: VERSION_MAJOR });
        }
        let flags = LE::read_u32(&h[12..16]);
        let count = LE::read_u32(&h[16..20]) as usize;
        let alignment = LE::read_u32(&h[20..24]) as usize;
        let file_len = LE::read_u64(&h[24..32]);
        if flags != 0 {
            return Err(corrupt(format!("header flags {flags:#x} are not defined in format {major}.{minor}")));
        }
        if h[36..60].iter().any(|&b| b != 0) {
            return Err(corrupt("reserved header bytes are not zero".into()));
        }
        if alignment != ALIGNMENT {
            return Err(corrupt(format!("section alignment {alignment}, expected {ALIGNMENT}")));
        }
        if file_len != bytes.len() as u64 {
            return Err(corrupt(format!(
                "header says the file is {file_len} bytes but it is {} (truncated or padded)",
                bytes.len()
            )));
        }
        if count > MAX_SECTIONS {
            return Err(corrupt(format!("section count {count} exceeds {MAX_SECTIONS}")));
        }
        let table_end = HEADER_LEN + count * ENTRY_LEN;
        if table_end > bytes.len() {
            return Err(corrupt(format!("section table of {count} entries runs past the end of the file")));
        }
        if crc32fast::hash(&bytes[HEADER_LEN..table_end]) != LE::read_u32(&h[32..36]) {
            return Err(corrupt("section table checksum mismatch".into()));
        }
        let mut sections = Vec::with_capacity(count);
        let mut cursor = table_end as u64;
        for i in 0..count {
            let e = &bytes[HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN];
            let mut tag = [0u8; 8];
            tag.copy_from_slice(&e[0..8]);
            let s = Section {
                tag: Tag(tag),
                offset: LE::read_u64(&e[8..16]),
                length: LE::read_u64(&e[16..24]),
                crc32: LE::read_u32(&e[24..28]),
                flags: LE::read_u32(&e[28..32]),
            };
            let name = s.tag.name();
            if !s.offset.is_multiple_of(ALIGNMENT as u64) {
                return Err(corrupt(format!(
                    "section {name} starts at {} which is not {ALIGNMENT}-byte aligned",
                    s.offset
                )));
            }
            if s.offset < cursor {
                return Err(corrupt(format!(
                    "section {name} at {} overlaps what precedes it (ends at {cursor})",
                    s.offset
                )));
            }
            let end = s.offset.checked_add(s.length).filter(|&end| end <= file_len).ok_or_else(|| {
                corrupt(format!("section {name} ({} bytes at {}) runs past the end of the file", s.length, s.offset))
            })?;
            if s.flags & !FLAG_REQUIRED != 0 {
                return Err(corrupt(format!("section {name} has undefined flags {:#x}", s.flags)));
            }
            if sections.iter().any(|o: &Section| o.tag == s.tag) {
                return Err(corrupt(format!("section {name} appears twice")));
            }
            if REQUIRED_TAGS.contains(&s.tag) && s.flags & FLAG_REQUIRED == 0 {
                return Err(corrupt(format!("section {name} must be marked required")));
            }
            if !Tag::KNOWN.contains(&s.tag) && s.flags & FLAG_REQUIRED != 0 {
                return Err(corrupt(format!("section {name} is marked required but this runtime does not know it")));
            }
            if bytes[cursor as usize..s.offset as usize].iter().any(|&b| b != 0) {
                return Err(corrupt(format!("padding before section {name} is not zero")));
            }
            if crc32fast::hash(&bytes[s.range()]) != s.crc32 {
                return Err(corrupt(format!("section {name} checksum mismatch")));
            }
            cursor = end;
            sections.push(s);
        }
        if cursor != file_len {
            return Err(corrupt(format!("{} bytes after the last section", file_len - cursor)));
        }
        for required in REQUIRED_TAGS {
            if !sections.iter().any(|s| s.tag == required) {
                return Err(corrupt(format!("required section {} is missing", required.name())));
            }
        }
        Ok(Layout { major, minor, flags, sections })
    }

    /// The entry for `tag`, if the file has that section.
    pub fn find(&self, tag: Tag) -> Option<&Section> {
        self.sections.iter().find(|s| s.tag == tag)
    }
}

/// Says what a file that is not an engine looks like and how to wrap it.
fn not_an_engine(bytes: &[u8], path: &Path) -> Error {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let pack = "segicl-edge pack --manifest MANIFEST.json --encoder ENCODER.onnx --decoder DECODER.onnx -o model.plan";
    let hint = if ext == "onnx" || bytes.first() == Some(&0x08) {
        format!(
            "this looks like a bare ONNX graph; an engine holds an encoder and a decoder with a manifest: run `{pack}`"
        )
    } else if bytes.len() >= 4 && (&bytes[..4] == b"ftrt" || &bytes[..4] == b"ptrt") || ext == "engine" || ext == "trt"
    {
        format!("this looks like a raw TensorRT plan; TensorRT plans travel inside an engine file built from the ONNX graphs: run `{pack}`")
    } else if bytes.is_empty() {
        "the file is empty".to_string()
    } else {
        format!("bad magic (expected {:?}); build an engine with `{pack}`", String::from_utf8_lossy(&MAGIC))
    };
    Error::NotAnEngine { path: path.to_path_buf(), hint }
}

/// One 4096-byte aligned page of an engine file read into memory.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; ALIGNMENT]);

/// An engine file read into memory and verified.
///
/// The whole file is read once into page-aligned memory owned by this value, and every payload
/// is verified and used from that copy; nothing reads the file again. Another process that
/// rewrites or truncates the file in place therefore cannot change what was verified or crash
/// this one (a memory map of it could do both: its pages change with the file, and a page cut
/// off by truncation raises SIGBUS). Payloads keep their 4096-byte alignment in memory.
pub struct EngineFile {
    path: PathBuf,
    pages: Vec<Page>,
    len: usize,
    layout: Layout,
}

impl std::fmt::Debug for EngineFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineFile").field("path", &self.path).field("len", &self.len).finish()
    }
}

/// The largest engine file this runtime reads (a bound against reading a device or a huge file
/// into memory).
pub const MAX_FILE_LEN: u64 = 1 << 31;

impl EngineFile {
    /// Reads `path` into memory and verifies every checksum, bound and padding byte. Anything
    /// but a regular file (a directory, a FIFO, a device) is refused at once, without blocking.
    pub fn open(path: &Path) -> Result<EngineFile> {
        let mut file = open_regular(path)?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(not_an_engine(&[], path));
        }
        if len > MAX_FILE_LEN {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                what: format!("file is {len} bytes, over the {MAX_FILE_LEN}-byte limit of an engine file"),
            });
        }
        let len = len as usize;
        let mut pages = vec![Page([0; ALIGNMENT]); len.div_ceil(ALIGNMENT)];
        let bytes = &mut pages_bytes_mut(&mut pages)[..len];
        file.read_exact(bytes).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Corrupt {
                path: path.to_path_buf(),
                what: format!("the file became shorter than {len} bytes while it was read (changed in place?)"),
            },
            _ => Error::io(path, e),
        })?;
        let layout = Layout::verify(bytes, path)?;
        Ok(EngineFile { path: path.to_path_buf(), pages, len, layout })
    }

    /// Where the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The verified section table.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The payload of section `tag`, borrowed from the verified copy (4096-byte aligned).
    pub fn section(&self, tag: Tag) -> Option<&[u8]> {
        self.layout.find(tag).map(|s| &self.bytes()[s.range()])
    }

    /// Total file length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the file has no bytes (never, for a verified file).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `Page` is `repr(C)` around a byte array with no padding, so the pages are
        // `pages.len() * ALIGNMENT` initialised bytes in one allocation, and `len` ≤ that.
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast::<u8>(), self.len) }
    }
}

fn pages_bytes_mut(pages: &mut [Page]) -> &mut [u8] {
    // SAFETY: as in `EngineFile::bytes`; the borrow of `pages` is exclusive.
    unsafe { std::slice::from_raw_parts_mut(pages.as_mut_ptr().cast::<u8>(), pages.len() * ALIGNMENT) }
}

/// Opens `path` for reading if it is a regular file. The open does not block (a FIFO would wait
/// for a writer) and the type is checked on the opened file, so it cannot change in between.
fn open_regular(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let kind = file.metadata().map_err(|e| Error::io(path, e))?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("is {what}; an engine is a regular file")),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Vec<u8> {
        EngineWriter::new()
            .section(Tag::MANIFEST, b"{}".to_vec())
            .section(Tag::ENCODER, vec![1; 5000])
            .section(Tag::DECODER, vec![2; 10])
            .to_bytes()
    }

    #[test]
    fn round_trip_layout() {
        let bytes = small();
        let layout = Layout::verify(&bytes, Path::new("t.plan")).unwrap();
        assert_eq!(layout.sections.len(), 3);
        let enc = layout.find(Tag::ENCODER).unwrap();
        assert_eq!(enc.offset % ALIGNMENT as u64, 0);
        assert_eq!(&bytes[enc.range()], &[1u8; 5000][..]);
        assert_eq!(layout.find(Tag::CARD), None);
        assert_eq!((layout.major, layout.minor), (1, 0));
    }

    #[test]
    fn a_calib_section_makes_a_1_1_file() {
        let mut bytes = small();
        let with_calib = EngineWriter::new()
            .section(Tag::MANIFEST, b"{}".to_vec())
            .section(Tag::ENCODER, vec![1; 5000])
            .section(Tag::DECODER, vec![2; 10])
            .section(Tag::CALIB, b"{}".to_vec())
            .to_bytes();
        let layout = Layout::verify(&with_calib, Path::new("t.plan")).unwrap();
        assert_eq!((layout.minor, layout.find(Tag::CALIB).unwrap().flags), (1, 0));
        let baked = EngineWriter::new()
            .section(Tag::MANIFEST, b"{}".to_vec())
            .section(Tag::ENCODER, vec![1; 5000])
            .section(Tag::DECODER, vec![2; 10])
            .section(Tag::TRT_DECODER, b"plan".to_vec())
            .to_bytes();
        let layout = Layout::verify(&baked, Path::new("t.plan")).unwrap();
        assert_eq!((layout.minor, layout.find(Tag::TRT_DECODER).unwrap().flags), (VERSION_MINOR, 0));
        // Any minor version is read; only the header CRC covers the field.
        LE::write_u16(&mut bytes[10..12], 7);
        let crc = crc32fast::hash(&bytes[..60]);
        LE::write_u32(&mut bytes[60..64], crc);
        assert_eq!(Layout::verify(&bytes, Path::new("t.plan")).unwrap().minor, 7);
    }

    #[test]
    fn unknown_optional_section_is_skipped_but_unknown_required_is_refused() {
        let base = EngineWriter::new()
            .section(Tag::MANIFEST, b"{}".to_vec())
            .section(Tag::ENCODER, vec![1])
            .section(Tag::DECODER, vec![2]);
        let optional = base.section_with_flags(Tag(*b"FUTURE\0\0"), 0, vec![3]).to_bytes();
        assert!(Layout::verify(&optional, Path::new("t")).is_ok());
        let required = EngineWriter::new()
            .section(Tag::MANIFEST, b"{}".to_vec())
            .section(Tag::ENCODER, vec![1])
            .section(Tag::DECODER, vec![2])
            .section_with_flags(Tag(*b"FUTURE\0\0"), FLAG_REQUIRED, vec![3])
            .to_bytes();
        let err = Layout::verify(&required, Path::new("t")).unwrap_err().to_string();
        assert!(err.contains("FUTURE") && err.contains("required"), "{err}");
    }

    #[test]
    fn hints_for_onnx_and_tensorrt() {
        let onnx = not_an_engine(&[0x08, 0x07], Path::new("m.bin")).to_string();
        assert!(onnx.contains("ONNX") && onnx.contains("segicl-edge pack"), "{onnx}");
        let trt = not_an_engine(b"ftrt\0\0", Path::new("m.plan")).to_string();
        assert!(trt.contains("TensorRT") && trt.contains("segicl-edge pack"), "{trt}");
    }
}
