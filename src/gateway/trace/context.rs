//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` header a request
//! comes with, and the one the gateway sends upstream, as fixed-size values (no allocation).

/// The version this speaks; a later version is read as far as version 00 goes (§4.3).
const VERSION: u8 = 0;
/// `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;
/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// A trace's id: 16 bytes, not all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, not all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A new random id (never all zero: the generator's state never is).
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&random_u64().to_be_bytes());
        id[8..].copy_from_slice(&random_u64().to_be_bytes());
        Self(id)
    }

    /// The id in lower-case hex, as Jaeger and the access log show it.
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        write_hex(&self.0, &mut out);
        out
    }

    /// The last 8 bytes as a number: what ratio-based sampling compares (W3C level 2 makes
    /// the rightmost 7 bytes random).
    pub fn low_bits(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    pub fn random() -> Self {
        Self(random_u64().to_be_bytes())
    }
}

/// What a valid `traceparent` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span: the parent of the gateway's.
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// Reads a `traceparent` value; `None` when it is not valid, which the caller treats as no
    /// header at all (§4.3: start a new trace).
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = trim_ows(value);
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(value[0], value[1])?;
        // Version ff is invalid; version 00 is exactly 55 bytes; a later one may append fields
        // after a dash (§4.3 "Versioning of traceparent").
        if version == 0xff
            || (version == VERSION && value.len() != TRACEPARENT_LEN)
            || (version > VERSION && value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-')
        {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        read_hex(&value[3..35], &mut trace_id)?;
        let mut parent_id = [0u8; 8];
        read_hex(&value[36..52], &mut parent_id)?;
        let flags = hex_byte(value[53], value[54])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags,
        })
    }
}

/// A `traceparent` value (version 00) naming `span` as the parent of the next hop.
pub fn format_traceparent(trace_id: &TraceId, span: &SpanId, sampled: bool) -> [u8; TRACEPARENT_LEN] {
    let mut out = [b'-'; TRACEPARENT_LEN];
    out[0] = b'0';
    out[1] = b'0';
    write_hex(&trace_id.0, &mut out[3..35]);
    write_hex(&span.0, &mut out[36..52]);
    write_hex(&[if sampled { SAMPLED } else { 0 }], &mut out[53..55]);
    out
}

fn random_u64() -> u64 {
    // Two draws: `random_below` leaves out its bound, and one draw never reaches u64::MAX.
    let high = crate::gateway::random::random_below(usize::MAX) as u64;
    let low = crate::gateway::random::random_below(usize::MAX) as u64;
    (high << 32 ^ low) | 1
}

/// Lower-case only: the spec makes upper-case hex invalid.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(high: u8, low: u8) -> Option<u8> {
    Some(hex_digit(high)? << 4 | hex_digit(low)?)
}

fn read_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

fn trim_ows(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_specs_example_parses_and_formats_back() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(&parent.trace_id.hex(), b"0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            parent.parent_id.0,
            [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]
        );
        assert!(parent.sampled());
        let again = format_traceparent(&parent.trace_id, &parent.parent_id, true);
        assert_eq!(&again[..], EXAMPLE);
        let unsampled = format_traceparent(&parent.trace_id, &parent.parent_id, false);
        assert!(unsampled.ends_with(b"-00"));
        assert!(!TraceParent::parse(&unsampled).expect("valid").sampled());
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            &b""[..],
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            // Upper-case hex, all-zero ids, version ff, bad separators.
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            // Version 00 is exactly 55 bytes.
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes() {
        let later = b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next";
        let parent = TraceParent::parse(later).expect("valid");
        assert!(parent.sampled());
        assert_eq!(
            TraceParent::parse(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x"),
            None
        );
        // Surrounding spaces (optional whitespace in a header value) are not part of it.
        assert!(TraceParent::parse(b" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00 ").is_some());
    }

    #[test]
    fn random_ids_are_never_zero_and_differ() {
        let (a, b) = (TraceId::random(), TraceId::random());
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        assert_ne!(SpanId::random().0, [0; 8]);
        let formatted = format_traceparent(&a, &SpanId::random(), true);
        assert_eq!(TraceParent::parse(&formatted).map(|p| p.trace_id), Some(a));
    }
}
