//! The HTTP/1.1 readers, each fed arbitrary bytes: what the fuzz targets in `fuzz/` call. Each
//! panics only where the reader broke a rule of its own (a panic on input is the bug). Not an
//! API.

/// The client-facing request reader (head, Content-Length and small chunked bodies).
pub fn request_head(bytes: &[u8]) {
    super::listen::http1::fuzz_requests(bytes);
}

/// The endpoint-facing chunked decoder, whole and split, against the request side's reader.
pub fn chunked(bytes: &[u8]) {
    super::upstream::fuzz_chunked(bytes);
}

/// The endpoint-facing response reader: head, interim answers, body framing.
pub fn response_head(bytes: &[u8]) {
    super::upstream::fuzz_response(bytes);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every input kept in `fuzz/regressions/<target>/`: each crash the fuzzer ever found, and
    /// inputs that once got through a reader, replayed on every `make test`.
    fn replay(target: &str, run: fn(&[u8])) -> usize {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.expect("a readable folder").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            run(&bytes);
            replayed += 1;
        }
        replayed
    }

    #[test]
    fn every_kept_fuzz_input_is_read_without_a_panic() {
        assert!(replay("request_head", super::request_head) > 0);
        assert!(replay("chunked", super::chunked) > 0);
        assert!(replay("response_head", super::response_head) > 0);
    }
}
