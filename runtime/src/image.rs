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
