use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let f = std::fs::File::open(&a[1]).unwrap();
    let t = Instant::now();
    let mut c = ab_payload::cdc::Chunker::new(f, ab_payload::cdc::CdcParams::DEFAULT);
    let mut n = 0;
    let mut x = 0u8;
    while let Some((_, b)) = c.next_chunk().unwrap() {
        n += 1;
        if a.len() > 2 {
            x ^= ab_payload::Sha256Digest::of(b).0[0];
        }
    }
    println!("{n} chunks in {:.2}s {x}", t.elapsed().as_secs_f64());
    let data = std::fs::read(&a[1]).unwrap();
    let t = Instant::now();
    let d = ab_payload::Sha256Digest::of(&data);
    println!("sha {:.2}s {}", t.elapsed().as_secs_f64(), d.0[0]);
}
