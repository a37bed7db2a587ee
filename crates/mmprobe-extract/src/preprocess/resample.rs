//! Image resizing with Pillow's numerics (`Image.resize` on 8-bit images, no
//! reducing gap): separable convolution, horizontal pass first, coefficients in
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

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
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
        let mut img = self.clone();
        if width != img.width {
            img = img.horizontal(width, filter);
        }
        if height != img.height {
            img = img.vertical(height, filter);
        }
        img
    }

    fn horizontal(&self, out_w: usize, filter: Filter) -> Rgb8 {
        let c = Coefficients::new(self.width, out_w, filter);
        let mut out = vec![0u8; out_w * self.height * 3];
        for y in 0..self.height {
            let row = &self.data[y * self.width * 3..(y + 1) * self.width * 3];
            for (xx, (xmin, k)) in c.taps.iter().enumerate() {
                for ch in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &w) in k.iter().enumerate() {
                        ss += row[(xmin + i) * 3 + ch] as i64 * w as i64;
                    }
                    out[(y * out_w + xx) * 3 + ch] = clip8(ss);
                }
            }
        }
        Rgb8::new(out_w, self.height, out)
    }

    fn vertical(&self, out_h: usize, filter: Filter) -> Rgb8 {
        let c = Coefficients::new(self.height, out_h, filter);
        let stride = self.width * 3;
        let mut out = vec![0u8; stride * out_h];
        for (yy, (ymin, k)) in c.taps.iter().enumerate() {
            for x in 0..stride {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &w) in k.iter().enumerate() {
                    ss += self.data[(ymin + i) * stride + x] as i64 * w as i64;
                }
                out[yy * stride + x] = clip8(ss);
            }
        }
        Rgb8::new(self.width, out_h, out)
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
}
