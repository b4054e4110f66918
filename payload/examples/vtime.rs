use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let key = ab_payload::TrustedKeys::load_file(std::path::Path::new(&a[2])).unwrap();
    let keys = ab_payload::TrustedKeys::new([key]);
    let f = std::fs::File::open(&a[1]).unwrap();
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let t = Instant::now();
    let p = ab_payload::verify_stream(&mut r, &keys).unwrap();
    println!(
        "{} bytes in {:.2}s",
        p.manifest.image_size,
        t.elapsed().as_secs_f64()
    );
}
