//! Hand-written JSON and RFC 3339 output (serde would triple the binary for three shapes).

/// Appends `s` as a JSON string literal. Invalid UTF-8 becomes U+FFFD, as docker's
/// json-file driver (Go's encoding/json) does, so every line stays valid JSON.
pub fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for chunk in s.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

pub fn int(out: &mut Vec<u8>, n: i64) {
    // A decimal i64 needs at most 20 bytes; avoids pulling core::fmt into the hot path.
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

fn pad(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut v = n;
    for i in (0..width).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

/// Appends `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC, always nine fraction digits, so the
/// strings sort as times).
pub fn rfc3339(out: &mut Vec<u8>, secs: i64, nanos: u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u64;
    let (y, m, d) = civil_from_days(days);
    pad(out, y as u64, 4);
    out.push(b'-');
    pad(out, u64::from(m), 2);
    out.push(b'-');
    pad(out, u64::from(d), 2);
    out.push(b'T');
    pad(out, rem / 3600, 2);
    out.push(b':');
    pad(out, rem / 60 % 60, 2);
    out.push(b':');
    pad(out, rem % 60, 2);
    out.push(b'.');
    pad(out, u64::from(nanos), 9);
    out.push(b'Z');
}

/// Howard Hinnant's days-since-epoch → proleptic Gregorian date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn json_escapes_and_round_trips() {
        let input = b"a\"b\\c\n\r\t\x08\x0c\x01\x1f\x7f \xc3\xa9 \xff end";
        let out = s(|v| json_str(v, input));
        assert_eq!(
            out,
            "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f} é \u{fffd} end\""
        );
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\n\r\t\x08\x0c\x01\x1f\x7f é \u{fffd} end");
    }

    #[test]
    fn ints() {
        for n in [0i64, 7, -7, 1234567890, i64::MIN, i64::MAX] {
            assert_eq!(s(|v| int(v, n)), n.to_string());
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(s(|v| rfc3339(v, 0, 0)), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-29T05:00:00Z
        assert_eq!(
            s(|v| rfc3339(v, 1_795_928_400, 123_456_789)),
            "2026-11-29T05:00:00.123456789Z"
        );
        // Leap day.
        assert_eq!(
            s(|v| rfc3339(v, 951_782_400 + 86_399, 5)),
            "2000-02-29T23:59:59.000000005Z"
        );
    }
}
