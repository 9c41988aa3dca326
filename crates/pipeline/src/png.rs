//! Just enough PNG to carry a Character Card: walk the chunks, read and write text chunks.
//!
//! Cards are PNG images with the card's JSON, base64-encoded, in a `tEXt` chunk keyed `chara`
//! (V2) or `ccv3` (V3). The image itself is never decoded. Every length is checked against
//! what is left of the file before it is used, so a truncated or hostile file is an error,
//! never a panic or a huge allocation.

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// Whether the bytes start like a PNG.
pub(crate) fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&SIGNATURE)
}

struct Chunk<'a> {
    kind: [u8; 4],
    data: &'a [u8],
    /// Byte range of the whole chunk (length, type, data, CRC) in the file.
    span: std::ops::Range<usize>,
}

fn chunks(bytes: &[u8]) -> Result<Vec<Chunk<'_>>, String> {
    if !is_png(bytes) {
        return Err("not a PNG file (bad signature)".into());
    }
    let mut out = Vec::new();
    let mut at = SIGNATURE.len();
    loop {
        let rest = &bytes[at..];
        if rest.len() < 12 {
            return Err(format!("truncated PNG: chunk header at byte {at} is cut off"));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = [rest[4], rest[5], rest[6], rest[7]];
        if len > rest.len() - 12 {
            return Err(format!(
                "truncated PNG: chunk {} at byte {at} claims {len} bytes",
                String::from_utf8_lossy(&kind)
            ));
        }
        let data = &rest[8..8 + len];
        let crc =
            u32::from_be_bytes([rest[8 + len], rest[9 + len], rest[10 + len], rest[11 + len]]);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&kind);
        hasher.update(data);
        if hasher.finalize() != crc {
            return Err(format!(
                "corrupt PNG: bad CRC in chunk {} at byte {at}",
                String::from_utf8_lossy(&kind)
            ));
        }
        out.push(Chunk { kind, data, span: at..at + 12 + len });
        at += 12 + len;
        if &kind == b"IEND" {
            return Ok(out);
        }
    }
}

/// The text chunks (`tEXt`, and uncompressed `iTXt`) as (keyword, text).
pub(crate) fn text_chunks(bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for c in chunks(bytes)? {
        match &c.kind {
            b"tEXt" => {
                let Some(nul) = c.data.iter().position(|&b| b == 0) else { continue };
                // tEXt is Latin-1; the base64 a card stores is ASCII either way.
                let text: String = c.data[nul + 1..].iter().map(|&b| b as char).collect();
                out.push((latin1(&c.data[..nul]), text));
            }
            b"iTXt" => {
                // keyword \0 compression-flag compression-method language \0 translated \0 text
                let Some(nul) = c.data.iter().position(|&b| b == 0) else { continue };
                let rest = &c.data[nul + 1..];
                if rest.len() < 2 || rest[0] != 0 {
                    continue; // compressed iTXt: no card tool writes it
                }
                let rest = &rest[2..];
                let Some(lang_end) = rest.iter().position(|&b| b == 0) else { continue };
                let rest = &rest[lang_end + 1..];
                let Some(tr_end) = rest.iter().position(|&b| b == 0) else { continue };
                out.push((
                    latin1(&c.data[..nul]),
                    String::from_utf8_lossy(&rest[tr_end + 1..]).into_owned(),
                ));
            }
            _ => {}
        }
    }
    Ok(out)
}

fn latin1(b: &[u8]) -> String {
    b.iter().map(|&b| b as char).collect()
}

/// The PNG with a `tEXt` chunk `keyword` = `text` (ASCII) placed before IEND, replacing any
/// text chunk with the same keyword.
pub(crate) fn with_text_chunk(png: &[u8], keyword: &str, text: &str) -> Result<Vec<u8>, String> {
    let list = chunks(png)?;
    let mut out = Vec::with_capacity(png.len() + text.len() + 64);
    out.extend_from_slice(&SIGNATURE);
    for c in &list {
        let same_key = (&c.kind == b"tEXt" || &c.kind == b"iTXt")
            && c.data.starts_with(keyword.as_bytes())
            && c.data.get(keyword.len()) == Some(&0);
        if same_key {
            continue;
        }
        if &c.kind == b"IEND" {
            let mut data = keyword.as_bytes().to_vec();
            data.push(0);
            data.extend_from_slice(text.as_bytes());
            write_chunk(&mut out, b"tEXt", &data);
        }
        out.extend_from_slice(&png[c.span.clone()]);
    }
    Ok(out)
}

fn write_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(kind);
    hasher.update(data);
    out.extend_from_slice(&hasher.finalize().to_be_bytes());
}

/// A valid 1×1 grey PNG, for cards exported without an image.
pub(crate) fn blank_png() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    // width 1, height 1, bit depth 8, colour type 0 (grey), compression, filter, interlace
    write_chunk(&mut out, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
    // zlib: header, one stored block holding the scanline [filter 0, pixel 0x80], Adler-32.
    let scanline = [0u8, 0x80];
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &scanline {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    let mut idat = vec![0x78, 0x01, 0x01, 0x02, 0x00, 0xfd, 0xff];
    idat.extend_from_slice(&scanline);
    idat.extend_from_slice(&((b << 16) | a).to_be_bytes());
    write_chunk(&mut out, b"IDAT", &idat);
    write_chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_chunk_round_trips_and_replaces_the_old_one() {
        let png = with_text_chunk(&blank_png(), "chara", "aGVsbG8=").unwrap();
        assert_eq!(text_chunks(&png).unwrap(), vec![("chara".to_string(), "aGVsbG8=".to_string())]);
        let again = with_text_chunk(&png, "chara", "d29ybGQ=").unwrap();
        assert_eq!(
            text_chunks(&again).unwrap(),
            vec![("chara".to_string(), "d29ybGQ=".to_string())]
        );
    }

    #[test]
    fn damage_is_an_error() {
        let png = with_text_chunk(&blank_png(), "chara", "aGVsbG8=").unwrap();
        assert!(text_chunks(&png[..png.len() - 5]).unwrap_err().contains("truncated"));
        let mut bad = png.clone();
        let n = bad.len();
        bad[n - 20] ^= 0xff;
        assert!(text_chunks(&bad).is_err());
        assert!(text_chunks(b"GIF89a").unwrap_err().contains("signature"));
    }
}
