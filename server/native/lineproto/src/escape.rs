//! Escaping of tag values, with the same table as the official `influxdb-client` `Point`.
//!
//! Comma, space and equals sign would end the value, so they are backslash-escaped; a backslash is
//! doubled so that a value ending in one cannot escape the separator after it; line breaks and tabs
//! become the two-character sequences `\n`, `\r`, `\t` because a raw newline ends the point.

/// Appends `value` escaped for use as a tag value.
pub fn push_tag_value(out: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b',' | b' ' | b'=' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

/// Appends a one-byte code (an MBO `action` or `side`) as a tag value.
///
/// Databento codes are ASCII letters; any other byte is written as `x` and two hex digits, so a
/// corrupt record still yields a valid, recognisable point.
#[inline]
pub fn push_code(out: &mut Vec<u8>, code: u8) {
    if code.is_ascii_alphanumeric() {
        out.push(code);
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.extend_from_slice(&[b'x', HEX[(code >> 4) as usize], HEX[(code & 15) as usize]]);
    }
}
