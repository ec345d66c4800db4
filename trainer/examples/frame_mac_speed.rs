//! How fast the TCP transport's frame MAC (`parallel::transport::tcp::FrameMac`: BLAKE3 keyed
//! hash of frame number and body) runs on one core of this CPU, for frames of the sizes a
//! pipeline sends, beside HMAC-SHA256 (the alternative it was measured against; 16-byte tag) and
//! a plain copy of the same bytes (which encoding a frame already does).
//!
//!   cargo run --release -p frugal-trainer --example frame_mac_speed

use frugal_trainer::parallel::transport::tcp::FrameMac;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hint::black_box;
use std::time::Instant;

/// MB/s of `f` over `bytes`-byte frames, run for about half a second.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let (t, mut n) = (Instant::now(), 0u64);
    while t.elapsed().as_secs_f64() < 0.5 {
        f();
        n += 1;
    }
    (n as f64 * bytes as f64) / t.elapsed().as_secs_f64() / 1e6
}

fn main() {
    println!("| frame | BLAKE3 keyed MB/s (the transport's) | HMAC-SHA256 MB/s | copy MB/s |");
    println!("|---|---|---|---|");
    // 128 KiB: an activation of a micro-batch of 4 × 64 tokens × 128 wide in fp32; ~1 MiB: a
    // ring chunk of a stage of that model.
    for bytes in [4 << 10, 128 << 10, 1 << 20, 16 << 20] {
        let body: Vec<u8> = (0..bytes).map(|i| (i * 31 % 251) as u8).collect();
        let mut mac = FrameMac::new([7; 32]);
        let blake3 = rate(bytes, || {
            black_box(mac.tag(black_box(&body)));
        });
        let key = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
        let mut frame = 0u64;
        let hmac = rate(bytes, || {
            let mut m = key.clone();
            m.update(&frame.to_be_bytes());
            m.update(black_box(&body));
            black_box(&m.finalize().into_bytes()[..16]);
            frame += 1;
        });
        let mut copy = vec![0u8; bytes];
        let copied = rate(bytes, || {
            copy.copy_from_slice(black_box(&body));
            black_box(&copy);
        });
        let name = if bytes >= 1 << 20 { format!("{} MiB", bytes >> 20) } else { format!("{} KiB", bytes >> 10) };
        println!("| {name} | {blake3:.0} | {hmac:.0} | {copied:.0} |");
    }
}
