//! How long drawing one graphic captcha takes: `cargo run --release -p resetmail-api --example captcha_bench [N]`.
//! Prints the median, p90 and worst time over N captchas (default 300) and the median PNG size.

use std::time::Instant;

use resetmail_api::captcha::graphic::{ANSWER_ALPHABET, draw};

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
        .max(10);
    let mut micros = Vec::with_capacity(count);
    let mut sizes = Vec::with_capacity(count);
    for n in 0..count {
        // Rotate through the alphabet so every character is drawn.
        let answer: String = (0..6)
            .map(|i| char::from(ANSWER_ALPHABET[(n * 6 + i) % ANSWER_ALPHABET.len()]))
            .collect();
        let started = Instant::now();
        let Some(png) = draw(&answer, 240, 60) else {
            eprintln!("cannot draw {answer}");
            std::process::exit(1);
        };
        micros.push(started.elapsed().as_micros());
        sizes.push(png.len());
    }
    micros.sort_unstable();
    sizes.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!("captchas drawn: {count} (240x60, 6 characters)");
    println!(
        "median: {} us, p90: {} us, max: {} us",
        at(0.5),
        at(0.9),
        at(1.0)
    );
    println!("median PNG size: {} bytes", sizes[sizes.len() / 2]);
}
