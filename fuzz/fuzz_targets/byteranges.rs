//! Arbitrary bytes as a server's answer to a multi-range request (a `Content-Type` line, then
//! the body): the reader never panics, never gives more than the asked bytes, and gives all of
//! them when it does not refuse (updater::install::byteranges).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Read;
use updater::install::byteranges::{boundary, parse_content_range, ByterangesReader};

fuzz_target!(|data: &[u8]| {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else { return };
    let (content_type, body) = (String::from_utf8_lossy(&data[..nl]), &data[nl + 1..]);
    let _ = parse_content_range(&content_type);
    let Ok(boundary) = boundary(&content_type) else { return };
    let asked = [3..40, 100..180, 700..710];
    let want: usize = asked.iter().map(|r| (r.end - r.start) as usize).sum();
    let mut out = Vec::new();
    let read = ByterangesReader::multipart(body, &boundary, &asked, Some(1000)).read_to_end(&mut out);
    assert!(out.len() <= want);
    if read.is_ok() {
        assert_eq!(out.len(), want);
    }
});
