//! The orientation transformers' `load_image` applies: it calls
//! `PIL.ImageOps.exif_transpose(image)` before `convert("RGB")`, which reads
//! `image.getexif().get(0x0112, 1)` and transposes for 2..=8. For a JPEG,
//! Pillow's `getexif()` reads tag 0x0112 of IFD0 in the EXIF APP1 segment
//! (later "Exif" APP1 segments are appended to the first); when that tag is
//! absent it takes the first `tiff:Orientation="N"` or
//! `<tiff:Orientation>N` in the XMP APP1 segment (the last one), so a file
//! whose only orientation is in XMP is rotated too.

/// The EXIF orientation (1..=8) that transformers' `load_image` applies to
/// this JPEG, as Pillow reads it; 1 (leave as is) when there is none or its
/// value is outside 1..=8. Cheap: only the marker segments before the first
/// scan are read.
///
/// The caller transposes the decoded RGB as Pillow does: 2 mirror left-right,
/// 3 rotate 180, 4 mirror top-bottom, 5 transpose, 6 rotate 90 clockwise,
/// 7 transverse, 8 rotate 90 counter-clockwise (EXIF's own meanings; the
/// `image` crate's `Orientation::from_exif` agrees).
///
/// Where Pillow would raise on malformed EXIF (a segment cut short, a header
/// that is not TIFF) this answers 1 instead; such a file fails in
/// transformers rather than decoding differently.
pub fn exif_orientation(jpeg: &[u8]) -> u8 {
    let (exif, xmp) = metadata_segments(jpeg);
    let value = exif.as_deref().and_then(tiff_orientation).or_else(|| xmp.and_then(xmp_orientation));
    match value {
        Some(v @ 1..=8) => v as u8,
        _ => 1,
    }
}

const EXIF_PREFIX: &[u8] = b"Exif\0\0";
const XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// The EXIF payload (the first "Exif" APP1, with the bodies of later ones
/// appended, as Pillow's `info["exif"]`) and the XMP packet of the last XMP
/// APP1, walking the markers the way Pillow's JPEG header parser does, up to
/// the first start-of-scan.
fn metadata_segments(b: &[u8]) -> (Option<Vec<u8>>, Option<&[u8]>) {
    let (mut exif, mut xmp): (Option<Vec<u8>>, Option<&[u8]>) = (None, None);
    if !crate::is_jpeg(b) {
        return (exif, xmp);
    }
    let mut i = 2;
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            i += 1; // junk between segments: skipped a byte at a time
            continue;
        }
        match b[i + 1] {
            // Markers without a length: SOI, EOI, RSTn, JPG, JPGn.
            0xC8 | 0xD0..=0xD9 | 0xF0..=0xFD => i += 2,
            marker @ (0xC0..=0xFE) => {
                let Some(len) = b.get(i + 2..i + 4).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
                    break;
                };
                let start = i + 4;
                let end = start + len.saturating_sub(2);
                let Some(payload) = b.get(start..end) else { break };
                if marker == 0xDA {
                    break;
                }
                if marker == 0xE1 {
                    if payload.starts_with(EXIF_PREFIX) {
                        match &mut exif {
                            None => exif = Some(payload.to_vec()),
                            Some(e) => e.extend_from_slice(&payload[EXIF_PREFIX.len()..]),
                        }
                    } else if payload.starts_with(XMP_PREFIX) {
                        xmp = Some(&payload[XMP_PREFIX.len()..]);
                    }
                }
                i = end;
            }
            0x00 => i += 2, // a stuffed 0xFF: the byte after it is looked at next
            0xFF => i += 1, // fill bytes: the second 0xFF may start a marker
            _ => break,     // Pillow: "no marker found"
        }
    }
    (exif, xmp)
}

/// Tag 0x0112 of IFD0 when it holds one integer, else None (Pillow keeps no
/// value for a type it does not know or an entry whose data is cut short, and
/// a count other than 1 gives a tuple, which no orientation matches).
fn tiff_orientation(exif: &[u8]) -> Option<i64> {
    // Pillow strips "Exif\0\0" once or twice.
    let mut t = exif;
    for _ in 0..2 {
        if let Some(rest) = t.strip_prefix(EXIF_PREFIX) {
            t = rest;
        }
    }
    let big = match t.get(..4)? {
        b"II*\0" => false,
        b"MM\0*" => true,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u32> {
        let s = t.get(at..at + 2)?;
        Some(if big { u16::from_be_bytes([s[0], s[1]]) } else { u16::from_le_bytes([s[0], s[1]]) } as u32)
    };
    let u32_at = |at: usize| -> Option<u32> {
        let s: [u8; 4] = t.get(at..at + 4)?.try_into().ok()?;
        Some(if big { u32::from_be_bytes(s) } else { u32::from_le_bytes(s) })
    };
    let ifd = u32_at(4)? as usize;
    let count = u16_at(ifd)? as usize;
    let mut found = None;
    for e in 0..count {
        let at = ifd + 2 + 12 * e;
        let (Some(tag), Some(typ), Some(n)) = (u16_at(at), u16_at(at + 2), u32_at(at + 4)) else {
            break; // Pillow stops reading the IFD there, keeping what it has
        };
        // Pillow skips entries of unknown type or no data, keeping an earlier value.
        if tag != 0x0112 || n == 0 {
            continue;
        }
        // Integer TIFF types and their sizes: BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG.
        let size = match typ {
            1 | 6 => 1,
            3 | 8 => 2,
            4 | 9 => 4,
            _ => continue,
        };
        // One value fits in the entry's 4-byte value field.
        found = match (n, size) {
            (1, 1) => t.get(at + 8).map(|&v| if typ == 6 { v as i8 as i64 } else { v as i64 }),
            (1, 2) => u16_at(at + 8).map(|v| if typ == 8 { v as u16 as i16 as i64 } else { v as i64 }),
            (1, 4) => u32_at(at + 8).map(|v| if typ == 9 { v as i32 as i64 } else { v as i64 }),
            _ => None,
        };
    }
    found
}

/// Pillow's `re.search(rb'tiff:Orientation(="|>)([0-9])', xmp)`.
fn xmp_orientation(xmp: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut from = 0;
    while let Some(pos) = xmp[from..].windows(KEY.len()).position(|w| w == KEY) {
        let after = from + pos + KEY.len();
        let digit = match xmp.get(after..) {
            Some([b'=', b'"', d, ..]) | Some([b'>', d, ..]) => Some(*d),
            _ => None,
        };
        if let Some(d @ b'0'..=b'9') = digit {
            return Some((d - b'0') as i64);
        }
        from = from + pos + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app1(payload: &[u8]) -> Vec<u8> {
        let mut s = vec![0xFF, 0xE1];
        s.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        s.extend_from_slice(payload);
        s
    }

    fn jpeg_with(segments: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        for s in segments {
            b.extend_from_slice(s);
        }
        b.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0xFF, 0xD9]);
        b
    }

    fn exif_le(typ: u16, count: u32, value: [u8; 4]) -> Vec<u8> {
        let mut p = b"Exif\0\0II*\0".to_vec();
        p.extend_from_slice(&8u32.to_le_bytes());
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&0x0112u16.to_le_bytes());
        p.extend_from_slice(&typ.to_le_bytes());
        p.extend_from_slice(&count.to_le_bytes());
        p.extend_from_slice(&value);
        p.extend_from_slice(&0u32.to_le_bytes());
        p
    }

    #[test]
    fn exif_types_and_counts() {
        assert_eq!(exif_orientation(&jpeg_with(&[app1(&exif_le(3, 1, [6, 0, 0, 0]))])), 6);
        assert_eq!(exif_orientation(&jpeg_with(&[app1(&exif_le(4, 1, [8, 0, 0, 0]))])), 8);
        assert_eq!(exif_orientation(&jpeg_with(&[app1(&exif_le(3, 2, [6, 0, 6, 0]))])), 1);
        assert_eq!(exif_orientation(&jpeg_with(&[app1(&exif_le(3, 1, [9, 0, 0, 0]))])), 1);
        assert_eq!(exif_orientation(&jpeg_with(&[])), 1);
    }

    #[test]
    fn xmp_only_when_exif_has_no_orientation() {
        let xmp = |s: &str| app1(&[XMP_PREFIX, s.as_bytes()].concat());
        assert_eq!(exif_orientation(&jpeg_with(&[xmp("<tiff:Orientation>5</tiff:Orientation>")])), 5);
        assert_eq!(exif_orientation(&jpeg_with(&[xmp("tiff:Orientation=\"x\" tiff:Orientation=\"3\"")])), 3);
        // An EXIF orientation of 1 wins over XMP's.
        let both = jpeg_with(&[app1(&exif_le(3, 1, [1, 0, 0, 0])), xmp("tiff:Orientation=\"6\"")]);
        assert_eq!(exif_orientation(&both), 1);
    }
}
