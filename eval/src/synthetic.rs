//! Seeded synthetic frames with exact masks, for tests, the `demo` and the `eval` command.
//!
//! Two kinds of scene are drawn. An ultrasound frame is a B-mode-like gray image (320 × 256)
//! of layered, speckled tissue that darkens with depth, with one hypoechoic lesion casting an
//! acoustic shadow and one hyperechoic structure. A fundus frame is a colour photograph
//! (288 × 288) of an orange-red retina in a circular field of view, with vessels, an optic disc
//! and its cup. Each mask is the exact shape that was drawn, before speckle and noise.
//!
//! The same kind and seed give the same bytes on every run and platform: randomness comes from
//! ChaCha8, and all geometry uses IEEE-exact arithmetic (`+ - × ÷ √`, rounding) with sines
//! computed here rather than by the platform's maths library.

use std::f64::consts::{FRAC_PI_2, PI, TAU};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use segicl::image::{OwnedImage, PixelFormat};

const US_WIDTH: usize = 320;
const US_HEIGHT: usize = 256;
const FUNDUS_SIZE: usize = 288;
/// What a vessel core multiplies red, green and blue by: dark red.
const VESSEL_TINT: [f64; 3] = [0.62, 0.4, 0.55];

/// A segmentation task the synthetic generator can draw: a scene kind and the structure to segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// The hypoechoic (dark) lesion of an ultrasound frame.
    UsLesion,
    /// The hyperechoic (bright) structure of an ultrasound frame.
    UsBright,
    /// The optic disc of a fundus photograph, cup included.
    FundusDisc,
    /// The optic cup of a fundus photograph.
    FundusCup,
}

impl Task {
    /// Every task, ultrasound first.
    pub const ALL: [Task; 4] = [Task::UsLesion, Task::UsBright, Task::FundusDisc, Task::FundusCup];

    /// Lower-case name, as used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Task::UsLesion => "us-lesion",
            Task::UsBright => "us-bright",
            Task::FundusDisc => "fundus-disc",
            Task::FundusCup => "fundus-cup",
        }
    }

    /// The task with this name, if there is one.
    pub fn from_name(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|task| task.name() == name)
    }

    /// The kind of scene that holds this task's structure.
    pub fn scene_kind(self) -> SceneKind {
        match self {
            Task::UsLesion | Task::UsBright => SceneKind::Ultrasound,
            Task::FundusDisc | Task::FundusCup => SceneKind::Fundus,
        }
    }
}

/// The kind of frame the generator draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SceneKind {
    /// A B-mode-like gray ultrasound frame, 320 × 256.
    Ultrasound,
    /// A colour fundus photograph, 288 × 288.
    Fundus,
}

/// One generated frame and the exact mask of every structure in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scene {
    /// The frame.
    pub image: OwnedImage,
    /// One mask per task of the scene's kind, in `Task::ALL` order: `width × height` bytes,
    /// 0 or 255.
    pub masks: Vec<(Task, Vec<u8>)>,
}

impl Scene {
    /// The mask of `task`.
    ///
    /// # Panics
    ///
    /// If `task` belongs to the other scene kind.
    pub fn mask(&self, task: Task) -> &[u8] {
        match self.masks.iter().find(|(t, _)| *t == task) {
            Some((_, mask)) => mask,
            None => {
                panic!("this scene has no {} mask: that task is drawn on {:?} scenes", task.name(), task.scene_kind())
            }
        }
    }
}

/// Draws the frame of kind `kind` for seed `seed`, with its masks.
pub fn scene(kind: SceneKind, seed: u64) -> Scene {
    match kind {
        SceneKind::Ultrasound => ultrasound(seed),
        SceneKind::Fundus => fundus(seed),
    }
}

/// Convenience: the image and the mask of `task` for seed `seed`.
pub fn sample(task: Task, seed: u64) -> (OwnedImage, Vec<u8>) {
    let scene = scene(task.scene_kind(), seed);
    let mask = scene.mask(task).to_vec();
    (scene.image, mask)
}

// ---------------------------------------------------------------------------------------------
// Ultrasound

fn ultrasound(seed: u64) -> Scene {
    let (w, h) = (US_WIDTH, US_HEIGHT);
    let mut rng = Rand::new(seed);

    let gain = rng.range(55.0, 75.0);
    let attenuation = rng.range(0.15, 0.3);
    let contrast = rng.range(0.25, 0.38);
    let layers = Layers::random(&mut rng, w, h);
    let texture = SmoothField::random(&mut rng, 5, 0.08, w, h);

    let lesion = {
        let cx = rng.range(0.3, 0.7) * w as f64;
        let cy = rng.range(0.3, 0.6) * h as f64;
        let (ra, rb) = (rng.range(18.0, 45.0), rng.range(18.0, 45.0));
        let angle = rng.range(0.0, PI);
        Blob::new(cx, cy, ra, rb, angle, wobble(&mut rng, 0.07))
    };
    let bright = place_bright(&mut rng, &lesion, w, h);
    let lesion_level = rng.range(0.15, 0.25);
    let bright_level = rng.range(2.0, 2.5);
    let shadow_strength = rng.range(0.3, 0.4);
    let shadow_fade = rng.range(0.4, 0.8) * h as f64;

    let (lesion_mask, lesion_cover) = rasterise(&lesion, w, h, 1.5);
    let (bright_mask, bright_cover) = rasterise(&bright, w, h, 1.5);
    let shadow = shadow(&lesion_mask, lesion.cy, w, h, shadow_strength, shadow_fade);
    let speckle = speckle(&mut rng, w, h, contrast);

    let mut data = vec![0; w * h];
    for y in 0..h {
        let depth = 1.0 - attenuation * y as f64 / h as f64;
        for x in 0..w {
            let i = y * w + x;
            let echo = gain * depth * texture.at(x, y);
            let tissue = echo * layers.level(x, y);
            // The lesion dims the layer it sits in; the bright structure has its own
            // echogenicity, whatever the layer.
            let mut level = tissue * (1.0 + (lesion_level - 1.0) * lesion_cover[i]);
            level += (bright_level * echo - level) * bright_cover[i];
            // Fluid inside the lesion scatters little: its speckle is fainter.
            let grain = 1.0 + (speckle[i] - 1.0) * (1.0 - 0.6 * lesion_cover[i]);
            data[i] = to_byte(level * shadow[i] * grain);
        }
    }
    Scene {
        image: OwnedImage { width: w, height: h, format: PixelFormat::Gray8, data },
        masks: vec![(Task::UsLesion, lesion_mask), (Task::UsBright, bright_mask)],
    }
}

/// Horizontal tissue layers of different echogenicity with gently undulating boundaries, each
/// boundary a thin brighter line (a fascia).
struct Layers {
    /// Per boundary, its depth in each column.
    boundaries: Vec<Vec<f64>>,
    /// Echogenicity above the first boundary, then below each boundary.
    levels: Vec<f64>,
    /// Extra echogenicity on a boundary line.
    fascia: f64,
}

impl Layers {
    fn random(rng: &mut Rand, w: usize, h: usize) -> Layers {
        let mut boundaries = Vec::new();
        let mut levels = vec![rng.range(0.9, 1.1)];
        let mut depth = rng.range(12.0, 28.0);
        while depth < h as f64 - 24.0 {
            let amplitude = rng.range(1.0, 6.0);
            let frequency = rng.range(0.008, 0.025);
            let phase = rng.range(0.0, TAU);
            let tilt = rng.range(-0.05, 0.05);
            boundaries.push(
                (0..w)
                    .map(|x| {
                        let x = x as f64;
                        depth + tilt * (x - w as f64 / 2.0) + amplitude * sin(frequency * x + phase)
                    })
                    .collect(),
            );
            levels.push(rng.range(0.85, 1.15));
            depth += rng.range(35.0, 80.0);
        }
        Layers { boundaries, levels, fascia: rng.range(0.25, 0.5) }
    }

    fn level(&self, x: usize, y: usize) -> f64 {
        let y = y as f64;
        let mut level = self.levels[0];
        for (k, boundary) in self.boundaries.iter().enumerate() {
            let offset = y - boundary[x];
            let step = (offset / 3.0 + 0.5).clamp(0.0, 1.0);
            level += (self.levels[k + 1] - self.levels[k]) * step;
            level += self.fascia * (1.0 - offset.abs() / 1.5).max(0.0);
        }
        level
    }
}

/// The hyperechoic structure: a band or a blob beside the lesion, clear of it and its shadow.
fn place_bright(rng: &mut Rand, lesion: &Blob, w: usize, h: usize) -> Blob {
    const MARGIN: f64 = 8.0;
    const EDGE: f64 = 4.0;
    let (mut ra, mut rb, angle, wobble) = if rng.unit() < 0.6 {
        (rng.range(24.0, 44.0), rng.range(8.0, 14.0), rng.range(-0.6, 0.6), wobble(rng, 0.04))
    } else {
        let r = rng.range(16.0, 26.0);
        (r, r * rng.range(0.65, 0.95), rng.range(0.0, PI), wobble(rng, 0.08))
    };
    // Free strips left and right of the lesion's columns (its shadow falls straight down).
    let left = (0.0, lesion.cx - lesion.reach() - MARGIN);
    let right = (lesion.cx + lesion.reach() + MARGIN, w as f64);
    let span = |strip: (f64, f64)| strip.1 - strip.0;
    let mut reach = Blob::new(0.0, 0.0, ra, rb, angle, wobble).reach();
    let need = 2.0 * (reach + EDGE);
    let strip = match (span(left) >= need, span(right) >= need) {
        (true, true) if rng.unit() < 0.5 => right,
        (true, true) | (true, false) => left,
        (false, true) => right,
        (false, false) if span(left) > span(right) => left,
        (false, false) => right,
    };
    if span(strip) < need {
        // Too big for the room left: shrink it to fit.
        let scale = (span(strip) / 2.0 - EDGE) / reach;
        ra *= scale;
        rb *= scale;
        reach *= scale;
    }
    let cx = rng.range(strip.0 + EDGE + reach, strip.1 - EDGE - reach);
    let top = (EDGE + reach).max(0.12 * h as f64);
    let bottom = (h as f64 - EDGE - reach).min(0.88 * h as f64).max(top);
    let cy = rng.range(top, bottom);
    Blob::new(cx, cy, ra, rb, angle, wobble)
}

/// Multiplier that darkens the band of columns under the lesion, strongest right below its back
/// wall and fading with depth.
fn shadow(lesion: &[u8], centre_row: f64, w: usize, h: usize, strength: f64, fade: f64) -> Vec<f64> {
    let mut factor = vec![1.0; w * h];
    // Lowest lesion row in each column.
    let mut bottom = vec![None; w];
    for (y, row) in lesion.chunks_exact(w).enumerate() {
        for (x, &m) in row.iter().enumerate() {
            if m != 0 {
                bottom[x] = Some(y);
            }
        }
    }
    let Some(first) = bottom.iter().position(Option::is_some) else {
        return factor;
    };
    let last = bottom.iter().rposition(Option::is_some).unwrap_or(first);
    for x in 0..w {
        let inside = (x as f64 - first as f64).min(last as f64 - x as f64);
        let lateral = ((inside - 0.15 * (last - first) as f64 + 3.0) / 6.0).clamp(0.0, 1.0);
        if lateral <= 0.0 {
            continue;
        }
        let start = bottom[x.clamp(first, last)].map_or(centre_row, |y| y as f64);
        for y in (start.floor() as usize + 1)..h {
            let along = 1.0 - (y as f64 - start) / fade;
            if along <= 0.0 {
                break;
            }
            factor[y * w + x] = 1.0 - strength * lateral * along;
        }
    }
    factor
}

/// Multiplicative speckle with mean 1 and standard deviation `contrast`: Rayleigh samples,
/// blurred a little (more across than down, like real speckle) and rescaled.
fn speckle(rng: &mut Rand, w: usize, h: usize, contrast: f64) -> Vec<f64> {
    let raw: Vec<f64> = (0..w * h)
        .map(|_| {
            let (a, b) = (rng.normal(), rng.normal());
            (a * a + b * b).sqrt()
        })
        .collect();
    let across = blur(&raw, w, h, &[1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0], true);
    let field = blur(&across, w, h, &[1.0, 2.0, 1.0], false);
    let count = field.len() as f64;
    let mean = field.iter().sum::<f64>() / count;
    let spread = (field.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / count).sqrt();
    let gain = contrast / spread;
    field.iter().map(|v| (1.0 + gain * (v - mean)).max(0.05)).collect()
}

/// Convolves rows (`across`) or columns with a normalised odd-length kernel, clamping at edges.
fn blur(src: &[f64], w: usize, h: usize, kernel: &[f64], across: bool) -> Vec<f64> {
    let total: f64 = kernel.iter().sum();
    let radius = kernel.len() / 2;
    let mut out = vec![0.0; src.len()];
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0.0;
            for (k, weight) in kernel.iter().enumerate() {
                let (sx, sy) = if across {
                    ((x + k).saturating_sub(radius).min(w - 1), y)
                } else {
                    (x, (y + k).saturating_sub(radius).min(h - 1))
                };
                sum += weight * src[sy * w + sx];
            }
            out[y * w + x] = sum / total;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Fundus

fn fundus(seed: u64) -> Scene {
    let n = FUNDUS_SIZE;
    let size = n as f64;
    let centre = (size - 1.0) / 2.0;
    let mut rng = Rand::new(seed);

    let fov = size * rng.range(0.46, 0.48);
    let retina = [rng.range(180.0, 210.0), rng.range(70.0, 90.0), rng.range(30.0, 50.0)];
    let vignette = (rng.range(0.15, 0.3), rng.range(0.25, 0.4));
    let illumination = SmoothField::random(&mut rng, 4, 0.1, n, n);
    let mottling = SmoothField::random(&mut rng, 14, 0.04, n, n);
    let noise = rng.range(1.5, 4.0);

    // Which eye: the disc sits left or right of centre, the fovea on the other side.
    let side = rng.sign();
    let radius = rng.range(22.0, 34.0);
    let disc = Blob::new(
        centre + side * rng.range(0.2, 0.27) * size,
        centre + rng.range(-0.06, 0.06) * size,
        // Slightly taller than wide, as optic discs are.
        radius * rng.range(1.0, 1.08),
        radius * rng.range(0.92, 1.0),
        FRAC_PI_2 + rng.range(-0.3, 0.3),
        [(0.0, 0.0); 3],
    );
    let disc_edge = rng.range(2.5, 5.0);
    let ratio = rng.range(0.35, 0.6);
    let cup = Blob::new(
        disc.cx - side * rng.range(0.0, 0.12) * radius,
        disc.cy + rng.range(-0.05, 0.05) * radius,
        ratio * disc.ra * rng.range(0.92, 1.08),
        ratio * disc.rb * rng.range(0.92, 1.08),
        FRAC_PI_2 + rng.range(-0.4, 0.4),
        [(0.0, 0.0); 3],
    );
    let disc_colour = [rng.range(230.0, 245.0), rng.range(135.0, 165.0), rng.range(80.0, 110.0)];
    let cup_colour = [rng.range(248.0, 255.0), rng.range(228.0, 245.0), rng.range(190.0, 215.0)];
    let fovea = (centre - side * rng.range(0.05, 0.12) * size, centre + rng.range(-0.03, 0.03) * size);
    let fovea_radius = radius * rng.range(1.3, 1.8);
    let fovea_depth = rng.range(0.15, 0.3);
    let vessels = vessels(&mut rng, n, &disc, ratio * radius, (fovea.0, fovea.1, 0.6 * fovea_radius));

    let (disc_mask, disc_cover) = rasterise(&disc, n, n, disc_edge);
    let (mut cup_mask, mut cup_cover) = rasterise(&cup, n, n, 2.0);
    // The cup is drawn inside the disc only.
    for ((m, c), (&dm, &dc)) in cup_mask.iter_mut().zip(&mut cup_cover).zip(disc_mask.iter().zip(&disc_cover)) {
        *m &= dm;
        *c = c.min(dc);
    }

    let mut data = vec![0; n * n * 3];
    for y in 0..n {
        for x in 0..n {
            let (dx, dy) = (x as f64 - centre, y as f64 - centre);
            let r = (dx * dx + dy * dy).sqrt();
            let alpha = (fov - r + 0.5).clamp(0.0, 1.0);
            if alpha <= 0.0 {
                continue;
            }
            let q2 = (r / fov) * (r / fov);
            let q8 = (q2 * q2) * (q2 * q2);
            let (fx, fy) = ((x as f64 - fovea.0) / fovea_radius, (y as f64 - fovea.1) / fovea_radius);
            let pit = (1.0 - (fx * fx + fy * fy)).max(0.0);
            let light = (1.0 - vignette.0 * q2 - vignette.1 * q8) * illumination.at(x, y);
            let choroid = mottling.at(x, y);
            let i = y * n + x;
            for ch in 0..3 {
                let background = retina[ch] * light * choroid * (1.0 - fovea_depth * pit * pit);
                let disc_here = disc_colour[ch] * (0.85 + 0.15 * light);
                let mut v = background + (disc_here - background) * disc_cover[i];
                v += (cup_colour[ch] - v) * cup_cover[i];
                v *= 1.0 - vessels[i] * (1.0 - VESSEL_TINT[ch]);
                v += noise * rng.normal();
                data[i * 3 + ch] = to_byte(v * alpha);
            }
        }
    }
    Scene {
        image: OwnedImage { width: n, height: n, format: PixelFormat::Rgb8, data },
        masks: vec![(Task::FundusDisc, disc_mask), (Task::FundusCup, cup_mask)],
    }
}

/// One vessel to trace: where it starts, its heading, and how it tapers.
#[derive(Clone, Copy)]
struct Vessel {
    x: f64,
    y: f64,
    heading: f64,
    width: f64,
    length: f64,
    /// Darkness at the core, 0 to 1 (veins darker than arteries).
    strength: f64,
}

/// Darkness of the vessel tree at each pixel, 0 (none) to 1: 6 to 10 tapering, curving vessels
/// that leave from inside the cup and cross the disc, each branching once, none entering the
/// circle `avoid` (x, y, radius) round the fovea.
fn vessels(rng: &mut Rand, n: usize, disc: &Blob, cup_radius: f64, avoid: (f64, f64, f64)) -> Vec<f64> {
    let mut map = vec![0.0; n * n];
    let count = rng.int(6, 10);
    let offset = rng.range(0.0, TAU);
    for k in 0..count {
        let heading = offset + TAU * (k as f64 + rng.range(-0.3, 0.3)) / count as f64;
        let start = cup_radius * rng.range(0.3, 0.7);
        let vessel = Vessel {
            x: disc.cx + start * cos(heading),
            y: disc.cy + start * sin(heading),
            heading,
            width: rng.range(3.0, 5.0),
            length: rng.range(90.0, 170.0),
            strength: if rng.unit() < 0.5 { 1.0 } else { 0.75 },
        };
        trace(rng, &mut map, n, vessel, avoid, 1);
    }
    map
}

/// Draws `vessel` into `map` step by step, spawning `branches` thinner side branches, until it
/// leaves the image or reaches the circle `avoid`.
fn trace(rng: &mut Rand, map: &mut [f64], n: usize, vessel: Vessel, avoid: (f64, f64, f64), branches: u32) {
    const STEP: f64 = 2.0;
    let curvature = rng.range(-0.012, 0.012);
    let branch_at = rng.range(0.3, 0.6) * vessel.length;
    let (mut x, mut y, mut heading) = (vessel.x, vessel.y, vessel.heading);
    let mut travelled = 0.0;
    while travelled < vessel.length {
        heading += curvature * STEP + rng.range(-0.04, 0.04);
        let (nx, ny) = (x + STEP * cos(heading), y + STEP * sin(heading));
        let width = vessel.width * (1.0 - 0.55 * travelled / vessel.length);
        // Fade in over the first few pixels, where the vessel surfaces in the cup.
        let strength = vessel.strength * (travelled / 10.0 + 0.15).min(1.0);
        stamp(map, n, (x, y), (nx, ny), width / 2.0, strength);
        if branches > 0 && travelled < branch_at && travelled + STEP >= branch_at {
            let child = Vessel {
                x: nx,
                y: ny,
                heading: heading + rng.sign() * rng.range(0.35, 0.8),
                width: width * 0.75,
                length: (vessel.length - travelled) * rng.range(0.6, 0.9),
                strength: vessel.strength,
            };
            trace(rng, map, n, child, avoid, branches - 1);
        }
        (x, y) = (nx, ny);
        travelled += STEP;
        let (ax, ay) = (x - avoid.0, y - avoid.1);
        if !(0.0..n as f64).contains(&x) || !(0.0..n as f64).contains(&y) || ax * ax + ay * ay < avoid.2 * avoid.2 {
            break;
        }
    }
}

/// Darkens `map` along the segment from `a` to `b`: a capsule of `radius` with soft shoulders.
fn stamp(map: &mut [f64], n: usize, a: (f64, f64), b: (f64, f64), radius: f64, strength: f64) {
    let reach = radius + 1.0;
    let Some(xs) = pixel_span(a.0.min(b.0) - reach, a.0.max(b.0) + reach, n) else {
        return;
    };
    let Some(ys) = pixel_span(a.1.min(b.1) - reach, a.1.max(b.1) + reach, n) else {
        return;
    };
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let length2 = (dx * dx + dy * dy).max(1e-9);
    for py in ys {
        for px in xs.clone() {
            let (ex, ey) = (px as f64 - a.0, py as f64 - a.1);
            let t = ((ex * dx + ey * dy) / length2).clamp(0.0, 1.0);
            let (qx, qy) = (ex - t * dx, ey - t * dy);
            let d = (qx * qx + qy * qy).sqrt() / (radius + 0.5);
            let cover = (2.0 * (1.0 - d * d)).clamp(0.0, 1.0) * strength;
            let cell = &mut map[py * n + px];
            *cell = cell.max(cover);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// An ellipse whose boundary is perturbed by a few low-frequency harmonics of the angle.
struct Blob {
    cx: f64,
    cy: f64,
    /// Semi-axis along the rotated first axis.
    ra: f64,
    /// Semi-axis along the rotated second axis.
    rb: f64,
    cos: f64,
    sin: f64,
    /// Per harmonic k = 2, 3, 4 of the angle: amplitude × (cos φ, sin φ).
    harmonics: [(f64, f64); 3],
}

impl Blob {
    fn new(cx: f64, cy: f64, ra: f64, rb: f64, angle: f64, harmonics: [(f64, f64); 3]) -> Blob {
        Blob { cx, cy, ra, rb, cos: cos(angle), sin: sin(angle), harmonics }
    }

    /// Radius round the centre within which the whole shape lies.
    fn reach(&self) -> f64 {
        let wobble: f64 = self.harmonics.iter().map(|(c, s)| (c * c + s * s).sqrt()).sum();
        self.ra.max(self.rb) * (1.0 + wobble)
    }

    /// Approximate signed distance in pixels from (x, y) to the boundary, negative inside.
    fn distance(&self, x: f64, y: f64) -> f64 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) / self.ra;
        let v = (dy * self.cos - dx * self.sin) / self.rb;
        let rho = (u * u + v * v).sqrt();
        if rho < 1e-12 {
            return -self.ra.min(self.rb);
        }
        // The direction as a unit complex number z; harmonic k is Re(z^k · e^{iφ}).
        let (zr, zi) = (u / rho, v / rho);
        let (mut pr, mut pi) = (zr, zi);
        let mut edge = 1.0;
        for &(hc, hs) in &self.harmonics {
            (pr, pi) = (pr * zr - pi * zi, pr * zi + pi * zr);
            edge += hc * pr - hs * pi;
        }
        let scale = ((zr * self.ra) * (zr * self.ra) + (zi * self.rb) * (zi * self.rb)).sqrt();
        (rho - edge) * scale
    }
}

/// Random harmonics for `Blob::new`, each of amplitude up to `amplitude`.
fn wobble(rng: &mut Rand, amplitude: f64) -> [(f64, f64); 3] {
    [(); 3].map(|()| {
        let (a, phase) = (rng.range(0.0, amplitude), rng.range(0.0, TAU));
        (a * cos(phase), a * sin(phase))
    })
}

/// The blob's exact mask (pixel centres inside, 0 or 255) and its anti-aliased coverage, 0 to 1,
/// which crosses ½ exactly on the mask's boundary and ramps over `soft` pixels.
fn rasterise(blob: &Blob, w: usize, h: usize, soft: f64) -> (Vec<u8>, Vec<f64>) {
    let mut mask = vec![0; w * h];
    let mut cover = vec![0.0; w * h];
    let reach = blob.reach() + soft + 1.0;
    let xs = pixel_span(blob.cx - reach, blob.cx + reach, w);
    let ys = pixel_span(blob.cy - reach, blob.cy + reach, h);
    if let (Some(xs), Some(ys)) = (xs, ys) {
        for y in ys {
            for x in xs.clone() {
                let d = blob.distance(x as f64, y as f64);
                let i = y * w + x;
                cover[i] = (0.5 - d / soft).clamp(0.0, 1.0);
                if d < 0.0 {
                    mask[i] = 255;
                }
            }
        }
    }
    (mask, cover)
}

/// The pixel indices in `0..len` between coordinates `lo` and `hi`, if any.
fn pixel_span(lo: f64, hi: f64, len: usize) -> Option<std::ops::RangeInclusive<usize>> {
    if hi < 0.0 || lo > (len - 1) as f64 {
        return None;
    }
    let first = lo.max(0.0).floor() as usize;
    let last = (hi.ceil() as usize).min(len - 1);
    Some(first..=last)
}

/// A smooth random multiplier: values round 1 on a coarse grid, blended with smoothstep weights.
struct SmoothField {
    cells: usize,
    values: Vec<f64>,
    scale: (f64, f64),
}

impl SmoothField {
    fn random(rng: &mut Rand, cells: usize, amplitude: f64, w: usize, h: usize) -> SmoothField {
        let values = (0..(cells + 1) * (cells + 1)).map(|_| 1.0 + rng.range(-amplitude, amplitude)).collect();
        let scale = (cells as f64 / (w - 1) as f64, cells as f64 / (h - 1) as f64);
        SmoothField { cells, values, scale }
    }

    fn at(&self, x: usize, y: usize) -> f64 {
        let locate = |v: f64| {
            let cell = (v.floor() as usize).min(self.cells - 1);
            let t = v - cell as f64;
            (cell, t * t * (3.0 - 2.0 * t))
        };
        let (i, tx) = locate(x as f64 * self.scale.0);
        let (j, ty) = locate(y as f64 * self.scale.1);
        let row = self.cells + 1;
        let value = |i: usize, j: usize| self.values[j * row + i];
        let top = value(i, j) + (value(i + 1, j) - value(i, j)) * tx;
        let bottom = value(i, j + 1) + (value(i + 1, j + 1) - value(i, j + 1)) * tx;
        top + (bottom - top) * ty
    }
}

/// Rounds and clamps an intensity to a byte.
fn to_byte(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Sine from basic arithmetic only, so it rounds the same on every platform.
fn sin(x: f64) -> f64 {
    let mut t = x - TAU * (x / TAU).round();
    if t > FRAC_PI_2 {
        t = PI - t;
    } else if t < -FRAC_PI_2 {
        t = -PI - t;
    }
    // Taylor series on [-π/2, π/2], to the x^17 term; the first term left out is below 1e-13.
    let t2 = t * t;
    let (mut term, mut sum) = (t, t);
    for k in 1..9 {
        let k = f64::from(k);
        term *= -t2 / ((2.0 * k) * (2.0 * k + 1.0));
        sum += term;
    }
    sum
}

/// Cosine from basic arithmetic only (see `sin`).
fn cos(x: f64) -> f64 {
    sin(x + FRAC_PI_2)
}

/// ChaCha8 with the few draws the generator needs, each defined bit for bit.
struct Rand(ChaCha8Rng);

impl Rand {
    fn new(seed: u64) -> Rand {
        Rand(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in lo..=hi.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + ((self.unit() * (hi - lo + 1) as f64) as usize).min(hi - lo)
    }

    /// -1 or +1 with equal odds.
    fn sign(&mut self) -> f64 {
        if self.unit() < 0.5 {
            -1.0
        } else {
            1.0
        }
    }

    /// Roughly standard normal: the sum of four uniform 16-bit draws, centred and scaled.
    fn normal(&mut self) -> f64 {
        let bits = self.0.next_u64();
        let sum: u64 = (0..4).map(|k| (bits >> (16 * k)) & 0xffff).sum();
        // Each draw has variance 65536² / 12, so the sum has 65536² / 3.
        (sum as f64 - 2.0 * 65535.0) * (3.0_f64.sqrt() / 65536.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> [SceneKind; 2] {
        [SceneKind::Ultrasound, SceneKind::Fundus]
    }

    fn mean_where(values: &[f64], keep: impl Fn(usize) -> bool) -> f64 {
        let (sum, count) =
            values.iter().enumerate().filter(|(i, _)| keep(*i)).fold((0.0, 0usize), |(s, c), (_, v)| (s + v, c + 1));
        sum / count as f64
    }

    fn luma(image: &OwnedImage) -> Vec<f64> {
        let bpp = image.format.bytes_per_pixel();
        image
            .data
            .chunks_exact(bpp)
            .map(|p| match p {
                [r, g, b] => 0.299 * f64::from(*r) + 0.587 * f64::from(*g) + 0.114 * f64::from(*b),
                _ => f64::from(p[0]),
            })
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for task in Task::ALL {
            assert_eq!(Task::from_name(task.name()), Some(task));
        }
        assert_eq!(Task::from_name("us-cyst"), None);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        for kind in kinds() {
            assert_eq!(scene(kind, 7), scene(kind, 7));
            let (a, b) = (scene(kind, 7), scene(kind, 8));
            assert_ne!(a.image.data, b.image.data);
            assert_ne!(a.masks, b.masks);
        }
    }

    #[test]
    fn output_is_pinned() {
        // FNV-1a over the bytes of a few scenes: a change here means every recorded result
        // on synthetic data changes too.
        fn fnv(bytes: &[u8], mut hash: u64) -> u64 {
            for &b in bytes {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            hash
        }
        let mut hash = 0xcbf2_9ce4_8422_2325;
        for kind in kinds() {
            let s = scene(kind, 1);
            hash = fnv(&s.image.data, hash);
            for (_, mask) in &s.masks {
                hash = fnv(mask, hash);
            }
        }
        assert_eq!(hash, 0x62ac_9515_4cbb_cb73);
    }

    #[test]
    fn dimensions_and_formats() {
        let us = scene(SceneKind::Ultrasound, 3).image;
        assert_eq!((us.width, us.height, us.format), (320, 256, PixelFormat::Gray8));
        assert_eq!(us.data.len(), 320 * 256);
        let fundus = scene(SceneKind::Fundus, 3).image;
        assert_eq!((fundus.width, fundus.height, fundus.format), (288, 288, PixelFormat::Rgb8));
        assert_eq!(fundus.data.len(), 288 * 288 * 3);
    }

    #[test]
    fn masks_are_exact_non_empty_and_nested() {
        for seed in 0..24 {
            for kind in kinds() {
                let s = scene(kind, seed);
                let tasks: Vec<Task> = s.masks.iter().map(|(t, _)| *t).collect();
                let expected: Vec<Task> = Task::ALL.into_iter().filter(|t| t.scene_kind() == kind).collect();
                assert_eq!(tasks, expected);
                for (task, mask) in &s.masks {
                    assert_eq!(mask.len(), s.image.width * s.image.height);
                    assert!(mask.iter().all(|&m| m == 0 || m == 255));
                    let area = mask.iter().filter(|&&m| m != 0).count();
                    assert!(area > 100, "seed {seed}: {} has only {area} pixels", task.name());
                }
            }
            let us = scene(SceneKind::Ultrasound, seed);
            let (lesion, bright) = (us.mask(Task::UsLesion), us.mask(Task::UsBright));
            assert!(lesion.iter().zip(bright).all(|(&a, &b)| a == 0 || b == 0), "seed {seed}: overlap");
            let fundus = scene(SceneKind::Fundus, seed);
            let (disc, cup) = (fundus.mask(Task::FundusDisc), fundus.mask(Task::FundusCup));
            assert!(cup.iter().zip(disc).all(|(&c, &d)| c == 0 || d != 0), "seed {seed}: cup outside disc");
            let (cup_area, disc_area) =
                (cup.iter().filter(|&&m| m != 0).count(), disc.iter().filter(|&&m| m != 0).count());
            assert!(cup_area < disc_area / 2, "seed {seed}: cup {cup_area} of disc {disc_area}");
        }
    }

    #[test]
    fn structures_stand_out_from_their_surroundings() {
        for seed in 0..12 {
            let us = scene(SceneKind::Ultrasound, seed);
            let gray = luma(&us.image);
            let (lesion, bright) = (us.mask(Task::UsLesion), us.mask(Task::UsBright));
            let lesion_mean = mean_where(&gray, |i| lesion[i] != 0);
            let tissue_mean = mean_where(&gray, |i| lesion[i] == 0 && bright[i] == 0);
            let bright_mean = mean_where(&gray, |i| bright[i] != 0);
            assert!(lesion_mean < 0.5 * tissue_mean, "seed {seed}: lesion {lesion_mean} tissue {tissue_mean}");
            assert!(tissue_mean < bright_mean, "seed {seed}: tissue {tissue_mean} bright {bright_mean}");

            let fundus = scene(SceneKind::Fundus, seed);
            let gray = luma(&fundus.image);
            let (disc, cup) = (fundus.mask(Task::FundusDisc), fundus.mask(Task::FundusCup));
            let n = fundus.image.width;
            let centre = (n as f64 - 1.0) / 2.0;
            let in_view = |i: usize| {
                let (x, y) = ((i % n) as f64 - centre, (i / n) as f64 - centre);
                x * x + y * y < (0.45 * n as f64) * (0.45 * n as f64)
            };
            let retina_mean = mean_where(&gray, |i| disc[i] == 0 && in_view(i));
            let rim_mean = mean_where(&gray, |i| disc[i] != 0 && cup[i] == 0);
            let cup_mean = mean_where(&gray, |i| cup[i] != 0);
            assert!(retina_mean < rim_mean, "seed {seed}: retina {retina_mean} rim {rim_mean}");
            assert!(rim_mean < cup_mean, "seed {seed}: rim {rim_mean} cup {cup_mean}");
        }
    }

    #[test]
    fn sample_matches_scene() {
        for task in Task::ALL {
            let (image, mask) = sample(task, 5);
            let s = scene(task.scene_kind(), 5);
            assert_eq!(image, s.image);
            assert_eq!(mask, s.mask(task));
        }
    }

    #[test]
    #[should_panic(expected = "no fundus-disc mask")]
    fn mask_of_other_kind_panics() {
        scene(SceneKind::Ultrasound, 0).mask(Task::FundusDisc);
    }

    #[test]
    fn sine_matches_std() {
        for k in -400..400 {
            let x = f64::from(k) * 0.037;
            assert!((sin(x) - x.sin()).abs() < 1e-12, "sin({x})");
            assert!((cos(x) - x.cos()).abs() < 1e-12, "cos({x})");
        }
    }
}
