//! Painting primitives of the demo generator: value noise, per-pixel grain, antialiased coverage of
//! irregular blobs and polylines, all on `size x size` float buffers.
use rand::rngs::StdRng;
use rand::Rng;

pub(crate) type Rgb = [f32; 3];

/// `floor` without a libm call (the baseline x86-64 target has no rounding instruction).
#[inline]
pub(crate) fn floor(v: f32) -> f32 {
    let i = v as i32 as f32;
    if v < i {
        i - 1.0
    } else {
        i
    }
}

/// Sine through a 4096-entry table with linear interpolation: plenty for textures, and several
/// times faster than `sin`, which is called for every pixel.
pub(crate) struct SinTable(Vec<f32>);

impl SinTable {
    const N: usize = 4096;

    /// The shared table.
    pub fn get() -> &'static SinTable {
        static TABLE: std::sync::OnceLock<SinTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(SinTable::new)
    }

    fn new() -> Self {
        Self(
            (0..=Self::N)
                .map(|i| (i as f32 / Self::N as f32 * std::f32::consts::TAU).sin())
                .collect(),
        )
    }

    #[inline]
    pub fn sin(&self, x: f32) -> f32 {
        let t = x / std::f32::consts::TAU;
        let t = (t - floor(t)) * Self::N as f32;
        let i = (t as usize).min(Self::N - 1);
        let f = t - i as f32;
        self.0[i] + (self.0[i + 1] - self.0[i]) * f
    }

    #[inline]
    pub fn cos(&self, x: f32) -> f32 {
        self.sin(x + std::f32::consts::FRAC_PI_2)
    }
}

/// `atan2` to within ~0.01 rad (a rational approximation on one octant): used for texture
/// coordinates only.
#[inline]
pub(crate) fn atan2_approx(y: f32, x: f32) -> f32 {
    use std::f32::consts::{FRAC_PI_2, PI};
    let (ax, ay) = (x.abs(), y.abs());
    let (num, den, swap) = if ay > ax {
        (ax, ay, true)
    } else {
        (ay, ax, false)
    };
    if den == 0.0 {
        return 0.0;
    }
    let t = num / den;
    let mut a = t * (0.9724 - 0.1919 * t * t);
    if swap {
        a = FRAC_PI_2 - a;
    }
    if x < 0.0 {
        a = PI - a;
    }
    if y < 0.0 {
        -a
    } else {
        a
    }
}

/// Periodic value noise on an `n x n` lattice (`n` a power of two) with smoothstep interpolation,
/// values in [-1, 1].
pub(crate) struct Noise {
    n: usize,
    values: Vec<f32>,
}

impl Noise {
    pub fn new(rng: &mut StdRng, n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        Self {
            n,
            values: (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect(),
        }
    }

    /// Noise at lattice coordinates `(u, v)` (one unit = one lattice cell; wraps around).
    #[inline]
    pub fn at(&self, u: f32, v: f32) -> f32 {
        let (x0, y0) = (floor(u), floor(v));
        let (fx, fy) = (u - x0, v - y0);
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let mask = self.n - 1;
        let xi = (x0 as i32 as usize) & mask;
        let yi = (y0 as i32 as usize) & mask;
        let (xj, yj) = ((xi + 1) & mask, (yi + 1) & mask);
        let v00 = self.values[yi * self.n + xi];
        let v10 = self.values[yi * self.n + xj];
        let v01 = self.values[yj * self.n + xi];
        let v11 = self.values[yj * self.n + xj];
        let top = v00 + (v10 - v00) * sx;
        let bottom = v01 + (v11 - v01) * sx;
        top + (bottom - top) * sy
    }

    /// Noise over an image of side `size`: `cells` lattice cells across the image.
    #[inline]
    pub fn at_pixel(&self, x: f32, y: f32, size: f32, cells_x: f32, cells_y: f32) -> f32 {
        self.at(x / size * cells_x, y / size * cells_y)
    }
}

/// Deterministic per-pixel noise in [-1, 1] (an integer hash: no RNG state, any order).
#[inline]
pub(crate) fn grain(x: usize, y: usize, salt: u32) -> f32 {
    let mut h = (x as u32).wrapping_mul(0x9E37_79B1) ^ (y as u32).wrapping_mul(0x85EB_CA77) ^ salt;
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^= h >> 15;
    (h as f32 / u32::MAX as f32) * 2.0 - 1.0
}

/// Antialiased coverage in [0, 1] of a shape whose signed distance (positive inside) is `d` pixels.
#[inline]
pub(crate) fn coverage(d: f32) -> f32 {
    (d + 0.5).clamp(0.0, 1.0)
}

/// Pixel bounding box `[x0, x1) x [y0, y1)` clipped to the image.
#[derive(Clone, Copy)]
pub(crate) struct BBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl BBox {
    pub fn around(min_x: f32, min_y: f32, max_x: f32, max_y: f32, size: usize) -> Self {
        let clip = |v: f32| (v.max(0.0) as usize).min(size);
        Self {
            x0: clip(min_x.floor() - 2.0),
            y0: clip(min_y.floor() - 2.0),
            x1: clip(max_x.ceil() + 3.0),
            y1: clip(max_y.ceil() + 3.0),
        }
    }
}

/// An irregular roundish region: radius modulated by a few angular harmonics.
pub(crate) struct Blob {
    pub cx: f32,
    pub cy: f32,
    pub r: f32,
    harmonics: [(f32, f32, f32); 4],
}

impl Blob {
    /// `roughness` ~0.1 gives a slightly wobbly outline, ~0.3 a very irregular one.
    pub fn random(rng: &mut StdRng, cx: f32, cy: f32, r: f32, roughness: f32) -> Self {
        let harmonics = std::array::from_fn(|k| {
            let amp = rng.gen_range(0.0..roughness) / (k as f32 + 1.0).sqrt();
            (
                amp,
                (k + 2) as f32,
                rng.gen_range(0.0..std::f32::consts::TAU),
            )
        });
        Self {
            cx,
            cy,
            r,
            harmonics,
        }
    }

    fn max_radius(&self) -> f32 {
        self.r * (1.0 + self.harmonics.iter().map(|h| h.0).sum::<f32>())
    }

    pub fn coverage_at(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let d = (dx * dx + dy * dy).sqrt();
        let theta = dy.atan2(dx);
        let r = self.r
            * (1.0
                + self
                    .harmonics
                    .iter()
                    .map(|&(a, k, p)| a * (k * theta + p).sin())
                    .sum::<f32>());
        coverage(r - d)
    }

    /// Adds this blob's coverage into `cov` (max-combined), over its bounding box only.
    pub fn paint(&self, cov: &mut [f32], size: usize) {
        let m = self.max_radius();
        let b = BBox::around(self.cx - m, self.cy - m, self.cx + m, self.cy + m, size);
        for y in b.y0..b.y1 {
            for x in b.x0..b.x1 {
                let c = self.coverage_at(x as f32 + 0.5, y as f32 + 0.5);
                let slot = &mut cov[y * size + x];
                *slot = slot.max(c);
            }
        }
    }
}

/// A stroke of constant width along a polyline.
pub(crate) struct Stroke {
    pub points: Vec<(f32, f32)>,
    pub half_width: f32,
}

impl Stroke {
    /// A smooth curved line (quadratic Bézier) from `a` to `b` bowing by `bow` pixels.
    pub fn curve(a: (f32, f32), b: (f32, f32), bow: f32, half_width: f32) -> Self {
        let (mx, my) = ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt().max(1e-3);
        let ctrl = (mx - dy / len * bow, my + dx / len * bow);
        let n = 24;
        let points = (0..=n)
            .map(|i| {
                let t = i as f32 / n as f32;
                let u = 1.0 - t;
                (
                    u * u * a.0 + 2.0 * u * t * ctrl.0 + t * t * b.0,
                    u * u * a.1 + 2.0 * u * t * ctrl.1 + t * t * b.1,
                )
            })
            .collect();
        Self { points, half_width }
    }

    /// A jagged crack: a random walk of short segments from `start` in direction `angle`.
    pub fn jagged(
        rng: &mut StdRng,
        start: (f32, f32),
        angle: f32,
        length: f32,
        half_width: f32,
    ) -> Self {
        let mut points = vec![start];
        let (mut x, mut y) = start;
        let mut walked = 0.0;
        let mut heading = angle;
        while walked < length {
            let step = rng.gen_range(3.0..7.0f32).min(length - walked + 0.5);
            heading = angle + rng.gen_range(-0.7..0.7f32) + (heading - angle) * 0.3;
            x += heading.cos() * step;
            y += heading.sin() * step;
            walked += step;
            points.push((x, y));
        }
        Self { points, half_width }
    }

    fn distance(&self, px: f32, py: f32) -> f32 {
        let mut best = f32::MAX;
        for w in self.points.windows(2) {
            let ((ax, ay), (bx, by)) = (w[0], w[1]);
            let (dx, dy) = (bx - ax, by - ay);
            let len2 = dx * dx + dy * dy;
            let t = if len2 > 0.0 {
                (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (qx, qy) = (ax + t * dx - px, ay + t * dy - py);
            best = best.min(qx * qx + qy * qy);
        }
        best.sqrt()
    }

    /// Adds this stroke's coverage into `cov` (max-combined), over its bounding box only.
    pub fn paint(&self, cov: &mut [f32], size: usize) {
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for &(x, y) in &self.points {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        let hw = self.half_width;
        let b = BBox::around(x0 - hw, y0 - hw, x1 + hw, y1 + hw, size);
        for y in b.y0..b.y1 {
            for x in b.x0..b.x1 {
                let c = coverage(hw - self.distance(x as f32 + 0.5, y as f32 + 0.5));
                let slot = &mut cov[y * size + x];
                *slot = slot.max(c);
            }
        }
    }
}

/// Blends every pixel toward `target(pixel)` by `amount * cov`.
pub(crate) fn blend(color: &mut [Rgb], cov: &[f32], amount: f32, target: impl Fn(Rgb) -> Rgb) {
    for (c, &a) in color.iter_mut().zip(cov) {
        if a > 0.0 {
            let t = target(*c);
            let k = a * amount;
            for ch in 0..3 {
                c[ch] += (t[ch] - c[ch]) * k;
            }
        }
    }
}
