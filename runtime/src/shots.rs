//! Default shots (the SHOTS section): a few image/mask pairs per named task, stored small (`pack`
//! uses twice the engine's resolution) so a device can segment before anyone supplies shots.

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::error::{Error, Result};
use crate::image::{OwnedImage, PixelFormat};
use crate::manifest::MAX_SHOTS;

/// Most tasks a SHOTS section may hold.
pub const MAX_TASKS: usize = 256;

/// One stored shot: an image and its 0/255 gray8 mask of the same size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredShot {
    /// The image (gray8 or rgb8).
    pub image: OwnedImage,
    /// The mask, gray8, 0 or 255.
    pub mask: OwnedImage,
}

/// Default shots of every task in an engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultShots {
    /// (task name, 1..=3 shots), in file order.
    pub tasks: Vec<(String, Vec<StoredShot>)>,
}

impl DefaultShots {
    /// The shots of `task`.
    pub fn get(&self, task: &str) -> Option<&[StoredShot]> {
        self.tasks.iter().find(|(name, _)| name == task).map(|(_, s)| s.as_slice())
    }

    /// Task names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.iter().map(|(n, _)| n.as_str())
    }

    /// Encodes the section payload (layout in docs/engine-format.md).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        push_u32(&mut out, self.tasks.len() as u32);
        for (name, shots) in &self.tasks {
            push_u32(&mut out, name.len() as u32);
            out.extend_from_slice(name.as_bytes());
            push_u32(&mut out, shots.len() as u32);
            for shot in shots {
                push_u32(&mut out, shot.image.format as u32);
                push_u32(&mut out, shot.image.width as u32);
                push_u32(&mut out, shot.image.height as u32);
                out.extend_from_slice(&shot.image.data);
                out.extend_from_slice(&shot.mask.data);
            }
        }
        out
    }

    /// Decodes a section payload, refusing anything out of bounds.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, at: 0 };
        let count = r.u32()? as usize;
        if count > MAX_TASKS {
            return Err(r.bad(&format!("{count} tasks, over the limit of {MAX_TASKS}")));
        }
        let mut tasks = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..count {
            let len = r.u32()? as usize;
            let name = std::str::from_utf8(r.take(len)?).map_err(|_| r.bad("a task name is not UTF-8"))?;
            if !seen.insert(name) {
                return Err(r.bad(&format!("task `{name}` appears twice")));
            }
            let name = name.to_string();
            let n = r.u32()? as usize;
            if n == 0 || n > MAX_SHOTS {
                return Err(r.bad(&format!("task `{name}` has {n} shots; 1 to {MAX_SHOTS} allowed")));
            }
            let mut shots = Vec::with_capacity(n);
            for _ in 0..n {
                let format = match r.u32()? {
                    0 => PixelFormat::Gray8,
                    2 => PixelFormat::Rgb8,
                    f => return Err(r.bad(&format!("task `{name}`: pixel format {f} is not gray8 (0) or rgb8 (2)"))),
                };
                let (w, h) = (r.u32()? as usize, r.u32()? as usize);
                if w == 0 || h == 0 || w > 4096 || h > 4096 {
                    return Err(r.bad(&format!("task `{name}`: shot size {w}×{h} is out of range")));
                }
                let image = r.take(w * h * format.bytes_per_pixel())?.to_vec();
                let mask = r.take(w * h)?.to_vec();
                shots.push(StoredShot {
                    image: OwnedImage { width: w, height: h, format, data: image },
                    mask: OwnedImage { width: w, height: h, format: PixelFormat::Gray8, data: mask },
                });
            }
            tasks.push((name, shots));
        }
        if r.at != bytes.len() {
            return Err(r.bad("trailing bytes"));
        }
        Ok(DefaultShots { tasks })
    }
}

fn push_u32(out: &mut Vec<u8>, v: u32) {
    let mut b = [0u8; 4];
    LE::write_u32(&mut b, v);
    out.extend_from_slice(&b);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &str) -> Error {
        Error::contract("manifest", format!("section SHOTS at byte {}: {what}", self.at))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| self.bad("runs past its end"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(LE::read_u32(self.take(4)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let shot = StoredShot {
            image: OwnedImage { width: 2, height: 1, format: PixelFormat::Rgb8, data: vec![1, 2, 3, 4, 5, 6] },
            mask: OwnedImage { width: 2, height: 1, format: PixelFormat::Gray8, data: vec![0, 255] },
        };
        let shots = DefaultShots { tasks: vec![("disc".into(), vec![shot.clone(), shot])] };
        let bytes = shots.to_bytes();
        assert_eq!(DefaultShots::from_bytes(&bytes).unwrap(), shots);
        for cut in 0..bytes.len() {
            assert!(DefaultShots::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
