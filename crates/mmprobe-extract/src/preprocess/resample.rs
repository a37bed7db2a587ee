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

/// Each output index's taps, all `k` wide: output `i` reads inputs
/// `start[i]..start[i] + k` with weights `weights[i * k..(i + 1) * k]`
/// (22-bit fixed point). Pillow's taps vary in count; here the shorter ones
/// are padded with zero weights (moving the start back at the image's end),
/// which adds nothing to the integer sums, so that the loops have one length.
struct Coefficients {
    k: usize,
    start: Vec<usize>,
    weights: Vec<i32>,
    /// Each weight 4 times: the lanes one pixel's R, G, B (and a spare) take in a vector register.
    lanes: Vec<i32>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        // Pillow multiplies by the reciprocal: dividing can differ by an ulp and flip a fixed-point weight.
        let ss = 1.0 / filterscale;
        let taps: Vec<(usize, Vec<i32>)> = (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                // C casts truncate toward zero.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let w: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) * ss)).collect();
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
        let k = taps.iter().map(|(_, w)| w.len()).max().unwrap_or(0).max(1).min(in_size);
        let mut start = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * k];
        for (i, (xmin, w)) in taps.iter().enumerate() {
            let s = (*xmin).min(in_size - k);
            start.push(s);
            weights[i * k + xmin - s..i * k + xmin - s + w.len()].copy_from_slice(w);
        }
        let lanes = weights.iter().flat_map(|&w| [w; 4]).collect();
        Coefficients { k, start, weights, lanes }
    }

    /// The taps of outputs `cols`.
    fn window(&self, cols: std::ops::Range<usize>) -> kernels::Taps<'_> {
        let k = self.k;
        kernels::Taps {
            k,
            start: &self.start[cols.clone()],
            weights: &self.weights[cols.start * k..cols.end * k],
            lanes: &self.lanes[cols.start * k * 4..cols.end * k * 4],
        }
    }

    /// The (shared) coefficients for one size pair: a loader meets few sizes,
    /// so each thread keeps the last few it made.
    fn cached(in_size: usize, out_size: usize, filter: Filter) -> std::rc::Rc<Coefficients> {
        type Cache = Vec<((usize, usize, Filter), std::rc::Rc<Coefficients>)>;
        thread_local! {
            static CACHE: std::cell::RefCell<Cache> = const { std::cell::RefCell::new(Vec::new()) };
        }
        CACHE.with_borrow_mut(|cache| {
            let key = (in_size, out_size, filter);
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                let hit = cache.remove(i);
                cache.push(hit);
            } else {
                if cache.len() == 8 {
                    cache.remove(0);
                }
                cache.push((key, std::rc::Rc::new(Coefficients::new(in_size, out_size, filter))));
            }
            cache.last().expect("just pushed").1.clone()
        })
    }

    /// Output `i`'s first input index and weights.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        (self.start[i], &self.weights[i * self.k..(i + 1) * self.k])
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
            let v = self.vertical(&Coefficients::cached(self.height, height, filter), rows.clone(), 0);
            return v.horizontal(&Coefficients::cached(self.width, width, filter), 0..rows.len(), cols);
        }
        // The vertical pass reads a band of input rows; only those go through the horizontal one.
        let vertical = (height != self.height).then(|| Coefficients::cached(self.height, height, filter));
        let band = match &vertical {
            Some(c) if !rows.is_empty() => {
                let first = c.start[rows.start];
                let last = c.start[rows.start..rows.end].iter().max().map_or(first, |y| y + c.k);
                first..last
            }
            Some(_) => 0..0,
            None => rows.clone(),
        };
        let h = match width != self.width {
            true => self.horizontal(&Coefficients::cached(self.width, width, filter), band.clone(), cols),
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
        if out.is_empty() {
            return Rgb8::new(out_w, rows.len(), out);
        }
        let src = &self.data[rows.start * self.width * 3..rows.end * self.width * 3];
        kernels::horizontal(src, self.width * 3, &mut out, &c.window(cols));
        Rgb8::new(out_w, rows.len(), out)
    }

    /// The vertical pass for output rows `rows`; `self` holds input rows from `first` on.
    fn vertical(&self, c: &Coefficients, rows: std::ops::Range<usize>, first: usize) -> Rgb8 {
        let stride = self.width * 3;
        let mut out = vec![0u8; stride * rows.len()];
        for (oy, dst) in rows.zip(out.chunks_exact_mut(stride.max(1))) {
            let (ymin, w) = c.taps(oy);
            let src = &self.data[(ymin - first) * stride..(ymin - first + c.k) * stride];
            kernels::vertical(src, stride, dst, w);
        }
        Rgb8::new(self.width, out.len() / stride.max(1), out)
    }
}

/// The two passes' inner loops, compiled twice on x86-64: for the baseline
/// CPU and for AVX2 (chosen at run time), where the integer sums run 8 wide.
/// Same integer arithmetic either way, so the same pixels.
mod kernels {
    use super::{PRECISION_BITS, clip8};

    const HALF: i32 = 1 << (PRECISION_BITS - 1);

    /// Some outputs' taps (see `Coefficients`): output `i` reads `k` inputs
    /// from `start[i]` with `weights[i * k..(i + 1) * k]`; `lanes` holds each
    /// weight 4 times.
    pub struct Taps<'a> {
        pub k: usize,
        pub start: &'a [usize],
        pub weights: &'a [i32],
        pub lanes: &'a [i32],
    }

    /// Rows of interleaved RGB `src` (`stride` bytes each) into rows of
    /// `dst`: output pixel `i` sums input pixels `start[i]..start[i] + k`.
    pub fn horizontal(src: &[u8], stride: usize, dst: &mut [u8], taps: &Taps) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { horizontal_avx2(src, stride, dst, taps) };
        }
        horizontal_any(src, stride, dst, taps)
    }

    /// Two output pixels at a time: one 256-bit register holds both pixels'
    /// sums as [r, g, b, -] x 2, each tap adding its 4 bytes (RGB and the
    /// next pixel's R, whose sum is dropped) times the tap's weight.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn horizontal_avx2(src: &[u8], stride: usize, dst: &mut [u8], taps: &Taps) {
        use std::arch::x86_64::*;
        let Taps { k, start, weights, lanes } = *taps;
        let out_w = start.len();
        let pairs = out_w / 2;
        for (r, out) in dst.chunks_exact_mut(out_w * 3).enumerate() {
            // From this row to the end of `src`: a tap's 4-byte read may take the next row's first byte.
            let rest = &src[r * stride..];
            let row = &rest[..stride];
            for p in 0..pairs {
                let (a, b) = (start[2 * p], start[2 * p + 1]);
                if (b + k) * 3 >= rest.len() {
                    // The image's last bytes: no byte to spare after them.
                    one_pixel(row, &mut out[6 * p..6 * p + 3], a, &weights[2 * p * k..(2 * p + 1) * k]);
                    one_pixel(row, &mut out[6 * p + 3..6 * p + 6], b, &weights[(2 * p + 1) * k..(2 * p + 2) * k]);
                    continue;
                }
                let (pa, pb) = (&rest[a * 3..(a + k) * 3 + 1], &rest[b * 3..(b + k) * 3 + 1]);
                let (wa, wb) =
                    (&lanes[2 * p * k * 4..(2 * p + 1) * k * 4], &lanes[(2 * p + 1) * k * 4..(2 * p + 2) * k * 4]);
                // SAFETY: AVX2 is enabled; every read lies inside `pa`, `pb` (4 bytes at 3t for t < k)
                // and `wa`, `wb` (4 lanes at 4t).
                let (ra, rb) = unsafe {
                    let mut acc = _mm256_set1_epi32(HALF);
                    for t in 0..k {
                        let xa = std::ptr::read_unaligned(pa.as_ptr().add(3 * t) as *const i32);
                        let xb = std::ptr::read_unaligned(pb.as_ptr().add(3 * t) as *const i32);
                        let px = _mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, xb, xa));
                        let wt = _mm256_set_m128i(
                            _mm_loadu_si128(wb.as_ptr().add(4 * t) as *const __m128i),
                            _mm_loadu_si128(wa.as_ptr().add(4 * t) as *const __m128i),
                        );
                        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(px, wt));
                    }
                    // clip8 on all lanes: shift, then saturate to i16 and to u8 (0..=255).
                    let v = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(acc);
                    let v = _mm256_packus_epi16(_mm256_packs_epi32(v, v), _mm256_setzero_si256());
                    (_mm256_extract_epi32::<0>(v).to_le_bytes(), _mm256_extract_epi32::<4>(v).to_le_bytes())
                };
                out[6 * p..6 * p + 6].copy_from_slice(&[ra[0], ra[1], ra[2], rb[0], rb[1], rb[2]]);
            }
            if out_w % 2 == 1 {
                let x = out_w - 1;
                one_pixel(row, &mut out[3 * x..3 * x + 3], start[x], &weights[x * k..(x + 1) * k]);
            }
        }
    }

    /// One output pixel from the `weights.len()` input pixels of `row` from `start` on.
    #[inline(always)]
    fn one_pixel(row: &[u8], out: &mut [u8], start: usize, weights: &[i32]) {
        let mut acc = [HALF; 3];
        for (px, &w) in row[start * 3..(start + weights.len()) * 3].chunks_exact(3).zip(weights) {
            for ch in 0..3 {
                acc[ch] += px[ch] as i32 * w;
            }
        }
        out.copy_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
    }

    /// The plain loops (what CPUs without AVX2 run; tests compare both).
    #[inline(always)]
    pub(super) fn horizontal_any(src: &[u8], stride: usize, dst: &mut [u8], taps: &Taps) {
        let Taps { k, start, weights, .. } = *taps;
        // The common tap counts as constants, so their loops unroll.
        match k {
            4 => horizontal_k::<4>(src, stride, dst, start, weights),
            5 => horizontal_k::<5>(src, stride, dst, start, weights),
            6 => horizontal_k::<6>(src, stride, dst, start, weights),
            7 => horizontal_k::<7>(src, stride, dst, start, weights),
            8 => horizontal_k::<8>(src, stride, dst, start, weights),
            _ => horizontal_dyn(src, stride, dst, start, weights, k),
        }
    }

    #[inline(always)]
    fn horizontal_k<const K: usize>(src: &[u8], stride: usize, dst: &mut [u8], start: &[usize], weights: &[i32]) {
        let out_row = start.len() * 3;
        for (row, out) in src.chunks_exact(stride).zip(dst.chunks_exact_mut(out_row)) {
            for ((o, &s), w) in out.chunks_exact_mut(3).zip(start).zip(weights.chunks_exact(K)) {
                let px = &row[s * 3..s * 3 + 3 * K];
                let mut acc = [HALF; 3];
                for t in 0..K {
                    for ch in 0..3 {
                        acc[ch] += px[t * 3 + ch] as i32 * w[t];
                    }
                }
                o.copy_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
            }
        }
    }

    #[inline(always)]
    fn horizontal_dyn(src: &[u8], stride: usize, dst: &mut [u8], start: &[usize], weights: &[i32], k: usize) {
        let out_row = start.len() * 3;
        for (row, out) in src.chunks_exact(stride).zip(dst.chunks_exact_mut(out_row)) {
            for ((o, &s), w) in out.chunks_exact_mut(3).zip(start).zip(weights.chunks_exact(k)) {
                one_pixel(row, o, s, w);
            }
        }
    }

    /// One output row `dst` from `weights.len()` input rows of `src`
    /// (`stride` bytes each), column by column.
    pub fn vertical(src: &[u8], stride: usize, dst: &mut [u8], weights: &[i32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { vertical_avx2(src, stride, dst, weights) };
        }
        vertical_any(src, stride, dst, weights)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn vertical_avx2(src: &[u8], stride: usize, dst: &mut [u8], weights: &[i32]) {
        vertical_any(src, stride, dst, weights)
    }

    #[inline(always)]
    pub(super) fn vertical_any(src: &[u8], stride: usize, dst: &mut [u8], weights: &[i32]) {
        // Blocks of columns whose sums stay in registers across the taps.
        const BLOCK: usize = 64;
        let mut x = 0;
        while x < stride {
            let n = BLOCK.min(stride - x);
            let mut acc = [HALF; BLOCK];
            for (t, &w) in weights.iter().enumerate() {
                let row = &src[t * stride + x..t * stride + x + n];
                for (a, &v) in acc[..n].iter_mut().zip(row) {
                    *a += v as i32 * w;
                }
            }
            for (o, &a) in dst[x..x + n].iter_mut().zip(&acc[..n]) {
                *o = clip8(a);
            }
            x += n;
        }
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

    /// Seeded numbers below `n` (a linear congruential generator): test images and sizes.
    fn numbers(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        }
    }

    /// Pillow's loops as written: each output pixel summing its own taps
    /// (only the non-zero ones, where Pillow's tap counts differ).
    fn plain_resize(img: &Rgb8, w: usize, h: usize, filter: Filter) -> Rgb8 {
        let pass = |src: &Rgb8, c: &Coefficients, horizontal: bool| {
            let (out_w, out_h) = if horizontal { (c.start.len(), src.height) } else { (src.width, c.start.len()) };
            let mut out = vec![0u8; out_w * out_h * 3];
            for y in 0..out_h {
                for x in 0..out_w {
                    let (first, weights) = c.taps(if horizontal { x } else { y });
                    for ch in 0..3 {
                        let mut acc = 1i32 << (PRECISION_BITS - 1);
                        for (t, &wt) in weights.iter().enumerate().filter(|(_, w)| **w != 0) {
                            let (sx, sy) = if horizontal { (first + t, y) } else { (x, first + t) };
                            acc += src.data[(sy * src.width + sx) * 3 + ch] as i32 * wt;
                        }
                        out[(y * out_w + x) * 3 + ch] = clip8(acc);
                    }
                }
            }
            Rgb8::new(out_w, out_h, out)
        };
        let (hc, vc) = (Coefficients::new(img.width, w, filter), Coefficients::new(img.height, h, filter));
        match (w != img.width, h != img.height) {
            _ if vertical_first((img.width, img.height), (w, h)) => pass(&pass(img, &vc, false), &hc, true),
            (true, true) => pass(&pass(img, &hc, true), &vc, false),
            (true, false) => pass(img, &hc, true),
            (false, true) => pass(img, &vc, false),
            (false, false) => img.clone(),
        }
    }

    #[test]
    fn the_fast_passes_equal_pillows_plain_loops() {
        let mut next = numbers(7);
        // Shrinking a little (4..8 taps, unrolled), a lot (the general loop), growing, one pixel wide.
        let sizes = [(320, 240, 299, 224), (320, 240, 224, 168), (1000, 700, 224, 157), (5, 9, 17, 3), (1, 7, 3, 2)];
        let random: Vec<_> = (0..40).map(|_| (1 + next(90), 1 + next(90), 1 + next(60), 1 + next(60))).collect();
        for (w, h, ow, oh) in sizes.into_iter().chain(random) {
            let img = Rgb8::new(w, h, (0..w * h * 3).map(|_| next(256) as u8).collect());
            for filter in [Filter::Bicubic, Filter::Bilinear] {
                assert_eq!(img.resize(ow, oh, filter), plain_resize(&img, ow, oh, filter), "{w}x{h} -> {ow}x{oh}");
            }
        }
    }

    #[test]
    fn the_plain_loops_equal_the_chosen_kernels() {
        // Where the CPU has AVX2 the dispatchers run the vector kernels; the plain loops must agree.
        let mut next = numbers(11);
        for (w, h, ow) in [(320, 7, 299), (320, 3, 224), (1000, 2, 224), (9, 4, 5), (1, 3, 2), (40, 5, 40)] {
            let img: Vec<u8> = (0..w * h * 3).map(|_| next(256) as u8).collect();
            for filter in [Filter::Bicubic, Filter::Bilinear] {
                let c = Coefficients::new(w, ow, filter);
                let (mut fast, mut plain) = (vec![0u8; ow * h * 3], vec![0u8; ow * h * 3]);
                kernels::horizontal(&img, w * 3, &mut fast, &c.window(0..ow));
                kernels::horizontal_any(&img, w * 3, &mut plain, &c.window(0..ow));
                assert_eq!(fast, plain, "horizontal {w} -> {ow}, k {}", c.k);
                let wts: Vec<i32> = (0..h).map(|i| c.weights[i % c.weights.len()]).collect();
                let (mut fast, mut plain) = (vec![0u8; w * 3], vec![0u8; w * 3]);
                kernels::vertical(&img, w * 3, &mut fast, &wts);
                kernels::vertical_any(&img, w * 3, &mut plain, &wts);
                assert_eq!(fast, plain, "vertical over {h} rows of {w}");
            }
        }
        let empty = Rgb8::new(4, 4, vec![7; 48]);
        assert_eq!(empty.resize_window(3, 3, Filter::Bicubic, 0..3, 1..1).data.len(), 0, "an empty window");
    }

    #[test]
    fn padded_taps_keep_their_weights_in_place() {
        // At the image's end a tap window is moved back: its weights move with it.
        let c = Coefficients::new(10, 4, Filter::Bicubic);
        for i in 0..4 {
            let (s, w) = c.taps(i);
            assert!(s + c.k <= 10, "output {i} reads inside the image");
            let centre = (i as f64 + 0.5) * 2.5;
            let heaviest = s + w.iter().enumerate().max_by_key(|(_, w)| **w).unwrap().0;
            assert!((heaviest as f64 + 0.5 - centre).abs() <= 1.0, "output {i}: weight peak at {heaviest}");
            assert!(w.iter().sum::<i32>().abs_diff(1 << PRECISION_BITS) <= 4, "weights of output {i} sum to 1");
        }
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
