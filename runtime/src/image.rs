//! Image and mask views over caller memory, and an owned image for files and samples.

use crate::error::{Error, Result};

/// How the pixels of an image are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PixelFormat {
    /// One byte per pixel.
    Gray8 = 0,
    /// One 16-bit sample per pixel, native byte order.
    Gray16 = 1,
    /// Three bytes per pixel: red, green, blue.
    Rgb8 = 2,
    /// Three bytes per pixel: blue, green, red.
    Bgr8 = 3,
    /// Four bytes per pixel: red, green, blue, alpha (alpha is ignored).
    Rgba8 = 4,
}

impl PixelFormat {
    /// Bytes one pixel takes.
    pub const fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Gray8 => 1,
            PixelFormat::Gray16 => 2,
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 => 4,
        }
    }

    /// Lower-case name, as used on the command line and in messages.
    pub const fn name(self) -> &'static str {
        match self {
            PixelFormat::Gray8 => "gray8",
            PixelFormat::Gray16 => "gray16",
            PixelFormat::Rgb8 => "rgb8",
            PixelFormat::Bgr8 => "bgr8",
            PixelFormat::Rgba8 => "rgba8",
        }
    }
}

/// A rectangle of pixels: columns `x..x + width` of rows `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Rect {
    /// First column.
    pub x: usize,
    /// First row.
    pub y: usize,
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

impl Rect {
    /// Whether pixel (`x`, `y`) lies inside.
    pub fn contains(&self, x: usize, y: usize) -> bool {
        (self.x..self.x + self.width).contains(&x) && (self.y..self.y + self.height).contains(&y)
    }
}

/// A borrowed image: `height` rows of `width` pixels, each row starting `stride` bytes after
/// the previous one.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    stride: usize,
    format: PixelFormat,
}

impl<'a> ImageView<'a> {
    /// Checks the geometry against the buffer and wraps it.
    pub fn new(data: &'a [u8], width: usize, height: usize, stride: usize, format: PixelFormat) -> Result<Self> {
        check_geometry("image", data.len(), width, height, stride, format.bytes_per_pixel())?;
        Ok(ImageView { data, width, height, stride, format })
    }

    /// A tightly packed image (stride = width × bytes per pixel).
    pub fn packed(data: &'a [u8], width: usize, height: usize, format: PixelFormat) -> Result<Self> {
        let stride = width
            .checked_mul(format.bytes_per_pixel())
            .ok_or_else(|| Error::invalid(format!("image width {width} overflows")))?;
        Self::new(data, width, height, stride, format)
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Bytes from the start of one row to the start of the next.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Pixel layout.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The whole buffer, row padding included.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// The bytes of row `y` that hold pixels (no row padding).
    pub fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width * self.format.bytes_per_pixel()]
    }

    /// The pixels of `rect` as a view of the same bytes (same stride, nothing copied).
    pub fn crop(&self, rect: Rect) -> Result<ImageView<'a>> {
        check_crop("image", rect, self.width, self.height)?;
        let start = rect.y * self.stride + rect.x * self.format.bytes_per_pixel();
        Ok(ImageView { data: &self.data[start..], width: rect.width, height: rect.height, ..*self })
    }

    /// Red, green and blue of pixel (x, y), each scaled to 0..=1 (gray repeats its value).
    #[inline]
    pub fn rgb(&self, x: usize, y: usize) -> [f32; 3] {
        let bpp = self.format.bytes_per_pixel();
        let p = &self.data[y * self.stride + x * bpp..];
        const S: f32 = 1.0 / 255.0;
        match self.format {
            PixelFormat::Gray8 => [p[0] as f32 * S; 3],
            PixelFormat::Gray16 => [u16::from_ne_bytes([p[0], p[1]]) as f32 / 65535.0; 3],
            PixelFormat::Rgb8 | PixelFormat::Rgba8 => [p[0] as f32 * S, p[1] as f32 * S, p[2] as f32 * S],
            PixelFormat::Bgr8 => [p[2] as f32 * S, p[1] as f32 * S, p[0] as f32 * S],
        }
    }
}

/// A borrowed, writable 8-bit mask: 0 is background, 255 foreground.
#[derive(Debug)]
pub struct MaskMut<'a> {
    data: &'a mut [u8],
    width: usize,
    height: usize,
    stride: usize,
}

impl<'a> MaskMut<'a> {
    /// Checks the geometry against the buffer and wraps it.
    pub fn new(data: &'a mut [u8], width: usize, height: usize, stride: usize) -> Result<Self> {
        check_geometry("mask", data.len(), width, height, stride, 1)?;
        Ok(MaskMut { data, width, height, stride })
    }

    /// A tightly packed mask (stride = width).
    pub fn packed(data: &'a mut [u8], width: usize, height: usize) -> Result<Self> {
        Self::new(data, width, height, width)
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Row `y`, writable.
    pub fn row_mut(&mut self, y: usize) -> &mut [u8] {
        let start = y * self.stride;
        &mut self.data[start..start + self.width]
    }

    /// Sets every pixel (not the row padding) to `value`.
    pub fn fill(&mut self, value: u8) {
        for y in 0..self.height {
            self.row_mut(y).fill(value);
        }
    }

    /// The pixels of `rect` as a writable view of the same bytes (same stride, nothing copied).
    pub fn crop(&mut self, rect: Rect) -> Result<MaskMut<'_>> {
        check_crop("mask", rect, self.width, self.height)?;
        let start = rect.y * self.stride + rect.x;
        Ok(MaskMut { data: &mut self.data[start..], width: rect.width, height: rect.height, stride: self.stride })
    }
}

/// Checks that `rect` is non-empty and inside a `width`×`height` image.
fn check_crop(what: &str, rect: Rect, width: usize, height: usize) -> Result<()> {
    let inside =
        |start: usize, len: usize, limit: usize| len > 0 && start.checked_add(len).is_some_and(|end| end <= limit);
    if !inside(rect.x, rect.width, width) || !inside(rect.y, rect.height, height) {
        return Err(Error::invalid(format!(
            "crop of {}×{} at ({}, {}) does not lie inside the {width}×{height} {what}",
            rect.width, rect.height, rect.x, rect.y
        )));
    }
    Ok(())
}

fn check_geometry(what: &str, len: usize, width: usize, height: usize, stride: usize, bpp: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(format!("{what} is {width}×{height}: both sides must be at least 1 pixel")));
    }
    let row = width.checked_mul(bpp).ok_or_else(|| Error::invalid(format!("{what} width {width} overflows")))?;
    if stride < row {
        return Err(Error::invalid(format!(
            "{what} stride {stride} is smaller than a row of {width} pixels ({row} bytes)"
        )));
    }
    let need = stride
        .checked_mul(height - 1)
        .and_then(|n| n.checked_add(row))
        .ok_or_else(|| Error::invalid(format!("{what} of {width}×{height} overflows")))?;
    if len < need {
        return Err(Error::invalid(format!(
            "{what} buffer holds {len} bytes but {width}×{height} with stride {stride} needs {need}"
        )));
    }
    Ok(())
}

/// An image that owns its pixels, tightly packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixel layout.
    pub format: PixelFormat,
    /// `height × width × bytes_per_pixel` bytes, rows top to bottom.
    pub data: Vec<u8>,
}

impl OwnedImage {
    /// An image of the given size filled with zeros.
    pub fn zeros(width: usize, height: usize, format: PixelFormat) -> Self {
        OwnedImage { width, height, format, data: vec![0; width * height * format.bytes_per_pixel()] }
    }

    /// A packed copy of `view`'s pixels.
    pub fn from_view(view: &ImageView) -> Self {
        let mut image = OwnedImage {
            width: 0,
            height: 0,
            format: view.format,
            data: Vec::with_capacity(view.width * view.height * view.format.bytes_per_pixel()),
        };
        image.copy_from(view);
        image
    }

    /// Whether `view` has this image's size, format and pixels (stride padding ignored).
    pub fn holds(&self, view: &ImageView) -> bool {
        let row = self.width * self.format.bytes_per_pixel();
        (self.width, self.height, self.format) == (view.width, view.height, view.format)
            && (0..view.height).all(|y| view.row(y) == &self.data[y * row..(y + 1) * row])
    }

    /// Replaces this image by a packed copy of `view`, reusing its buffer.
    pub fn copy_from(&mut self, view: &ImageView) {
        (self.width, self.height, self.format) = (view.width, view.height, view.format);
        self.data.clear();
        for y in 0..view.height {
            self.data.extend_from_slice(view.row(y));
        }
    }

    /// Borrows the pixels as a view.
    pub fn view(&self) -> ImageView<'_> {
        ImageView {
            data: &self.data,
            width: self.width,
            height: self.height,
            stride: self.width * self.format.bytes_per_pixel(),
            format: self.format,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_are_views_of_the_same_bytes() {
        // 4×3 rgb8 with a stride of 14: pixel (x, y) holds x + 10·y in every channel.
        let mut bytes = vec![0xEEu8; 14 * 3];
        for y in 0..3 {
            for x in 0..4 {
                bytes[y * 14 + x * 3..][..3].fill((x + 10 * y) as u8);
            }
        }
        let image = ImageView::new(&bytes, 4, 3, 14, PixelFormat::Rgb8).unwrap();
        let crop = image.crop(Rect { x: 1, y: 1, width: 2, height: 2 }).unwrap();
        assert_eq!((crop.width(), crop.height(), crop.stride()), (2, 2, 14));
        assert_eq!(crop.row(1), &[21, 21, 21, 22, 22, 22]);
        assert_eq!(OwnedImage::from_view(&crop).data, [11, 11, 11, 12, 12, 12, 21, 21, 21, 22, 22, 22]);
        for bad in [Rect { x: 3, y: 0, width: 2, height: 1 }, Rect { x: 0, y: 0, width: 0, height: 1 }] {
            assert!(image.crop(bad).unwrap_err().to_string().contains("4×3"));
        }
        assert!(image.crop(Rect { x: usize::MAX, y: 0, width: 2, height: 1 }).is_err());

        let mut buf = [1u8; 5 * 3];
        let mut mask = MaskMut::new(&mut buf, 4, 3, 5).unwrap();
        mask.crop(Rect { x: 2, y: 1, width: 2, height: 2 }).unwrap().fill(9);
        assert_eq!(buf, [1, 1, 1, 1, 1, 1, 1, 9, 9, 1, 1, 1, 9, 9, 1]);
    }
}
