//! Image resizing with Pillow's numerics (`Image.resize` on 8-bit images, no
//! reducing gap): separable convolution, horizontal pass first unless the
//! height shrinks much more than the width (Pillow 13), coefficients in
//! 22-bit fixed point, each pass rounded and clamped to 8 bits. Shrinking widens
//! the kernel by the scale factor, which is Pillow's antialiasing.

/// The resampling filters `preprocessor_config.json` names by Pillow's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    /// From Pillow's `Image.Resampling` value (2 = bilinear, 3 = bicubic).
    pub fn from_pil(code: i64) -> Option<Filter> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                // Keys' cubic with a = -0.5, as Pillow.
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index: the first input index and the fixed-point weights.
struct Coefficients {
    taps: Vec<(usize, Vec<i32>)>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let taps = (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                // C casts truncate toward zero.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let w: Vec<f64> =
                    (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filterscale)).collect();
                let total: f64 = w.iter().sum();
                let fixed = w
                    .iter()
                    .map(|&k| {
                        let k = if total != 0.0 { k / total } else { k };
                        let scaled = k * (1u32 << PRECISION_BITS) as f64;
                        (if k < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                    })
                    .collect();
                (xmin, fixed)
            })
            .collect();
        Coefficients { taps }
    }
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Whether Pillow (13 and later) runs the vertical pass first: when both
/// passes are needed and the height shrinks by more than twice as many
/// pixels as the width does. Each pass rounds to 8 bits, so the order shows
/// in the pixels.
fn vertical_first((w, h): (usize, usize), (out_w, out_h): (usize, usize)) -> bool {
    let (w, h, out_w, out_h) = (w as i64, h as i64, out_w as i64, out_h as i64);
    w != out_w && out_h < h && h - out_h > 2 * (w - out_w)
}

/// An interleaved 8-bit RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb8 {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * 3, "RGB buffer size");
        Rgb8 { width, height, data }
    }

    /// Resizes to `width` x `height` as Pillow does.
    pub fn resize(&self, width: usize, height: usize, filter: Filter) -> Rgb8 {
        self.resize_window(width, height, filter, 0..height, 0..width)
    }

    /// The window `rows` x `cols` of [`Rgb8::resize`]'s output, computing
    /// only the pixels it holds (each output pixel depends on its own taps
    /// alone, so the values are those of the whole resize).
    pub fn resize_window(
        &self,
        width: usize,
        height: usize,
        filter: Filter,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> Rgb8 {
        assert!(rows.end <= height && cols.end <= width, "the window lies inside the output");
        if vertical_first((self.width, self.height), (width, height)) {
            let v = self.vertical(&Coefficients::new(self.height, height, filter), rows.clone(), 0);
            return v.horizontal(&Coefficients::new(self.width, width, filter), 0..rows.len(), cols);
        }
        // The vertical pass reads a band of input rows; only those go through the horizontal one.
        let vertical = (height != self.height).then(|| Coefficients::new(self.height, height, filter));
        let band = match &vertical {
            Some(c) if !rows.is_empty() => {
                let first = c.taps[rows.start].0;
                let last = c.taps[rows.start..rows.end].iter().map(|(y, k)| y + k.len()).max().unwrap_or(first);
                first..last
            }
            Some(_) => 0..0,
            None => rows.clone(),
        };
        let h = match width != self.width {
            true => self.horizontal(&Coefficients::new(self.width, width, filter), band.clone(), cols),
            false => self.crop(band.clone(), cols),
        };
        match vertical {
            Some(c) => h.vertical(&c, rows, band.start),
            None => h,
        }
    }

    /// Rows x cols of the image, copied.
    fn crop(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Rgb8 {
        let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
        for y in rows.clone() {
            out.extend_from_slice(&self.data[(y * self.width + cols.start) * 3..(y * self.width + cols.end) * 3]);
        }
        Rgb8::new(cols.len(), rows.len(), out)
    }

    /// The horizontal pass over input rows `rows`, output columns `cols`.
    fn horizontal(&self, c: &Coefficients, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Rgb8 {
        let out_w = cols.len();
        let mut out = vec![0u8; out_w * rows.len() * 3];
        for (oy, y) in rows.clone().enumerate() {
            let row = &self.data[y * self.width * 3..(y + 1) * self.width * 3];
            let dst = &mut out[oy * out_w * 3..(oy + 1) * out_w * 3];
            for (ox, (xmin, k)) in c.taps[cols.clone()].iter().enumerate() {
                // Pillow accumulates 8-bit resampling in 32-bit integers.
                let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
                let src = &row[xmin * 3..(xmin + k.len()) * 3];
                for (px, &w) in src.chunks_exact(3).zip(k) {
                    ss[0] += px[0] as i32 * w;
                    ss[1] += px[1] as i32 * w;
                    ss[2] += px[2] as i32 * w;
                }
                dst[ox * 3..ox * 3 + 3].copy_from_slice(&[clip8(ss[0]), clip8(ss[1]), clip8(ss[2])]);
            }
        }
        Rgb8::new(out_w, rows.len(), out)
    }

    /// The vertical pass for output rows `rows`; `self` holds input rows from `first` on.
    fn vertical(&self, c: &Coefficients, rows: std::ops::Range<usize>, first: usize) -> Rgb8 {
        let stride = self.width * 3;
        let mut out = vec![0u8; stride * rows.len()];
        let mut ss = vec![0i32; stride];
        for (oy, (ymin, k)) in c.taps[rows].iter().enumerate() {
            ss.fill(1 << (PRECISION_BITS - 1));
            // Row by row, so each pass over `ss` is contiguous.
            for (i, &w) in k.iter().enumerate() {
                let y = ymin + i - first;
                for (acc, &v) in ss.iter_mut().zip(&self.data[y * stride..(y + 1) * stride]) {
                    *acc += v as i32 * w;
                }
            }
            for (o, &acc) in out[oy * stride..(oy + 1) * stride].iter_mut().zip(&ss) {
                *o = clip8(acc);
            }
        }
        Rgb8::new(self.width, out.len() / stride.max(1), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_flat_stays_flat() {
        let img = Rgb8::new(3, 2, (0..18).map(|v| v as u8 * 10).collect());
        assert_eq!(img.resize(3, 2, Filter::Bicubic), img);
        let flat = Rgb8::new(7, 5, vec![200; 7 * 5 * 3]);
        let r = flat.resize(3, 11, Filter::Bicubic);
        assert!(r.data.iter().all(|&v| v == 200));
    }

    #[test]
    fn the_vertical_pass_goes_first_when_the_height_shrinks_much_more() {
        // Pillow 13.0's rule (checked against it on 4,000 random size pairs, both filters).
        assert!(vertical_first((20, 70), (32, 32)));
        assert!(vertical_first((13, 87), (10, 80)));
        assert!(!vertical_first((46, 71), (11, 1)), "70 rows vs 35 columns: not more than twice");
        assert!(!vertical_first((27, 41), (76, 45)), "the height grows");
        assert!(!vertical_first((20, 70), (20, 32)), "one pass only");
        // Both orders round differently: the rule picks the pixels.
        let img = Rgb8::new(20, 70, (0..20 * 70 * 3).map(|v| (v * 53 % 256) as u8).collect());
        let first_h = img.horizontal(&Coefficients::new(20, 32, Filter::Bicubic), 0..70, 0..32);
        let first_h = first_h.vertical(&Coefficients::new(70, 32, Filter::Bicubic), 0..32, 0);
        assert_ne!(img.resize(32, 32, Filter::Bicubic), first_h);
    }

    #[test]
    fn a_window_is_that_part_of_the_whole_resize() {
        let img = Rgb8::new(31, 23, (0..31 * 23 * 3).map(|v| (v * 37 % 251) as u8).collect());
        for (w, h) in [(17, 29), (40, 12), (31, 9), (12, 23), (40, 5)] {
            let whole = img.resize(w, h, Filter::Bicubic);
            for (rows, cols) in [(0..h, 0..w), (2..h - 3, 1..w - 2), (h / 2..h / 2 + 1, 0..w), (0..0, 0..w)] {
                let win = img.resize_window(w, h, Filter::Bicubic, rows.clone(), cols.clone());
                assert_eq!(win, whole.crop(rows.clone(), cols.clone()), "{w}x{h} rows {rows:?} cols {cols:?}");
            }
        }
    }
}
