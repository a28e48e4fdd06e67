//! The graphic captcha: a PNG drawn by the `captcha` crate, its ticket and hashed answer kept in
//! PostgreSQL for `RESETMAIL_CAPTCHA_TTL`, so any api replica can check any ticket. Any check consumes
//! the ticket; answers compare without regard to case.

use std::time::Duration;

use anyhow::bail;
use base64::Engine as _;
use captcha::filters::{Dots, Noise, Wave};
use resetmail_shared::db::captcha_tickets;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use super::{CaptchaConfig, CaptchaError};

/// Characters of an answer: no look-alikes (0/O/Q/D, 1/I/L, 8/B, 2/Z …) and none too wide to fit.
pub const ANSWER_ALPHABET: &[u8] = b"ACEFGHJKNPRSTUVXY345679";
/// Characters of a ticket.
const TICKET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The `captcha` crate draws on a canvas of this size (width, height) and crops the picture from it.
const CANVAS: (u32, u32) = (400, 300);
/// Length of a ticket, as Cloudreve's.
pub const TICKET_LEN: usize = 20;

/// A captcha to show: its ticket and its image as a `data:` URI.
#[derive(Debug, serde::Serialize)]
pub struct Issued {
    /// The image, `data:image/png;base64,…`.
    pub image: String,
    /// The ticket to send back with the answer.
    pub ticket: String,
}

/// Draws, stores and checks graphic captchas.
#[derive(Clone, Debug)]
pub struct GraphicCaptcha {
    width: u32,
    height: u32,
    length: usize,
    ttl: Duration,
}

impl GraphicCaptcha {
    /// The captcha as configured; the drawing canvas is 400×300, so nothing larger.
    pub fn new(config: &CaptchaConfig) -> anyhow::Result<Self> {
        if config.width > 400 || config.height > 300 {
            bail!("RESETMAIL_CAPTCHA_WIDTH/HEIGHT: at most 400×300");
        }
        // Every character, repeated to the configured length, must fit the picture.
        for character in ANSWER_ALPHABET.iter().map(|byte| char::from(*byte)) {
            let widest: String =
                std::iter::repeat_n(character, usize::from(config.length)).collect();
            if placed(&widest, config.width, config.height).is_none() {
                bail!(
                    "{} captcha characters do not fit in {}×{} pixels: lower RESETMAIL_CAPTCHA_LENGTH or raise RESETMAIL_CAPTCHA_WIDTH",
                    config.length,
                    config.width,
                    config.height
                );
            }
        }
        Ok(Self {
            width: config.width,
            height: config.height,
            length: usize::from(config.length),
            ttl: config.ttl,
        })
    }

    /// Draws a new captcha and stores its ticket.
    pub async fn issue(&self, pool: &PgPool) -> Result<Issued, CaptchaError> {
        let answer = random_string(ANSWER_ALPHABET, self.length)?;
        let ticket = random_string(TICKET_ALPHABET, TICKET_LEN)?;
        let (width, height) = (self.width, self.height);
        // Drawing takes a few milliseconds of CPU: off the async workers.
        let drawn = tokio::task::spawn_blocking(move || {
            draw(&answer, width, height).map(|png| (answer, png))
        })
        .await
        .map_err(|error| {
            CaptchaError::Unavailable(format!("drawing the captcha failed: {error}"))
        })?;
        let Some((answer, png)) = drawn else {
            return Err(CaptchaError::Unavailable(
                "the captcha could not be encoded as PNG".into(),
            ));
        };
        captcha_tickets::insert(pool, &ticket, &answer_hash(&ticket, &answer), self.ttl).await?;
        let image = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        );
        Ok(Issued { image, ticket })
    }

    /// Checks `answer` for `ticket`, consuming the ticket whatever the outcome.
    pub async fn check(
        &self,
        pool: &PgPool,
        ticket: Option<&str>,
        answer: Option<&str>,
    ) -> Result<(), CaptchaError> {
        let Some(ticket) = ticket.filter(|ticket| !ticket.is_empty()) else {
            return Err(CaptchaError::Failed("no captcha ticket".into()));
        };
        let stored = captcha_tickets::take(pool, ticket).await?;
        let Some(answer) = answer.filter(|answer| !answer.is_empty()) else {
            return Err(CaptchaError::Failed("no captcha answer".into()));
        };
        match stored {
            None => Err(CaptchaError::Failed(
                "unknown, used or expired captcha ticket".into(),
            )),
            Some(hash) if hash == answer_hash(ticket, answer) => Ok(()),
            Some(_) => Err(CaptchaError::Failed("wrong captcha answer".into())),
        }
    }
}

/// What is stored for an answer: the SHA-256 of the ticket and the answer in capitals.
pub fn answer_hash(ticket: &str, answer: &str) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(ticket.as_bytes());
    digest.update(b"\n");
    digest.update(answer.to_uppercase().as_bytes());
    digest.finalize().into()
}

/// Draws `answer` as a `width`×`height` PNG with noise, waves and dots; `None` if a character cannot
/// be drawn or the PNG cannot be encoded. Takes a few milliseconds of CPU.
pub fn draw(answer: &str, width: u32, height: u32) -> Option<Vec<u8>> {
    let mut captcha = placed(answer, width, height)?;
    captcha
        .apply_filter(Noise::new(0.2))
        .apply_filter(Wave::new(2.0, 12.0).horizontal())
        .apply_filter(Wave::new(2.0, 12.0).vertical())
        .view(width, height)
        .apply_filter(Dots::new(6).min_radius(2).max_radius(4));
    captcha.as_png()
}

/// The characters of `answer` placed on the crate's canvas, if they fit a `width`×`height` picture.
fn placed(answer: &str, width: u32, height: u32) -> Option<captcha::Captcha> {
    let mut captcha = captcha::Captcha::new();
    // The crate picks characters at random from a set: a set of one places ours, in order.
    for character in answer.chars() {
        captcha.set_chars(&[character]).add_char();
    }
    if captcha.chars_as_string() != answer {
        return None;
    }
    // The text must fit, or the picture would cut characters off; and the
    // window must lie inside the crate's 400×300 canvas, or cropping would index past it.
    let area = captcha.text_area();
    let (centre_x, centre_y) = ((area.left + area.right) / 2, (area.top + area.bottom) / 2);
    let fits_text = area.right.saturating_sub(area.left) <= width
        && area.bottom.saturating_sub(area.top) + 4 <= height;
    let fits_canvas = centre_x >= width / 2
        && centre_x - width / 2 + width <= CANVAS.0
        && centre_y >= height / 2
        && centre_y - height / 2 + height <= CANVAS.1;
    (fits_text && fits_canvas).then_some(captcha)
}

/// `len` characters of `alphabet`, uniformly, from the operating system's CSPRNG.
fn random_string(alphabet: &[u8], len: usize) -> Result<String, CaptchaError> {
    let unbiased = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut bytes = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut bytes)
            .map_err(|error| CaptchaError::Unavailable(format!("no randomness: {error}")))?;
        for byte in bytes
            .iter()
            .map(|byte| usize::from(*byte))
            .filter(|byte| *byte < unbiased)
        {
            out.push(char::from(alphabet[byte % alphabet.len()]));
            if out.len() == len {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_character_can_be_drawn_and_the_image_has_the_configured_size() {
        for chunk in ["ACEFGH", "JKNPRS", "TUVXY3", "456797"] {
            let png = draw(chunk, 240, 60).unwrap_or_else(|| panic!("cannot draw {chunk}"));
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
            let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
            assert_eq!((width, height), (240, 60));
        }
    }

    #[test]
    fn text_that_would_be_cut_off_is_refused() {
        assert!(
            draw("KXNPEHJTYA", 240, 60).is_none(),
            "ten characters cannot fit in 240 pixels"
        );
        // Wider than the crate's canvas allows around this text: refused, not a panic.
        assert!(draw("KXNPEHJTYA", 400, 60).is_none());
        assert!(draw("KXNP", 400, 300).is_none());
        assert!(draw("KXNPEH", 240, 60).is_some());
    }

    #[test]
    fn random_strings_use_only_their_alphabet_and_differ() {
        let a = random_string(ANSWER_ALPHABET, 6).unwrap_or_default();
        let b = random_string(TICKET_ALPHABET, TICKET_LEN).unwrap_or_default();
        assert_eq!((a.len(), b.len()), (6, TICKET_LEN));
        assert!(a.bytes().all(|c| ANSWER_ALPHABET.contains(&c)));
        assert!(b.bytes().all(|c| TICKET_ALPHABET.contains(&c)));
        assert_ne!(
            random_string(TICKET_ALPHABET, TICKET_LEN).unwrap_or_default(),
            b
        );
    }

    #[test]
    fn answers_compare_without_regard_to_case() {
        assert_eq!(answer_hash("T", "ab3c"), answer_hash("T", "AB3C"));
        assert_ne!(answer_hash("T", "AB3C"), answer_hash("U", "AB3C"));
    }
}
