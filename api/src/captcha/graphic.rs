//! The graphic captcha: a PNG drawn by the `captcha` crate, its ticket and answer kept in PostgreSQL
//! for `RESETMAIL_CAPTCHA_TTL`, so any api replica can check any ticket. The answer is stored as an
//! HMAC keyed with `RESETMAIL_CAPTCHA_SECRET`: whoever reads the table cannot try the few million
//! possible answers without the key. Any check consumes the ticket; answers compare without regard to
//! case.

use std::{str::FromStr, time::Duration};

use anyhow::bail;
use base64::Engine as _;
use captcha::filters::{Dots, Noise, Wave};
use hmac::{Hmac, KeyInit as _, Mac as _};
use resetmail_shared::db::captcha_tickets;
use sha2::Sha256;
use sqlx::PgPool;

use super::{CaptchaConfig, CaptchaError, CaptchaKind};

/// Characters of an answer: no look-alikes (0/O/Q/D, 1/I/L, 8/B, 2/Z …) and none too wide to fit.
pub const ANSWER_ALPHABET: &[u8] = b"ACEFGHJKNPRSTUVXY345679";
/// Characters of a ticket.
const TICKET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The `captcha` crate draws on a canvas of this size (width, height) and crops the picture from it.
const CANVAS: (u32, u32) = (400, 300);
/// Length of a ticket, as Cloudreve's.
pub const TICKET_LEN: usize = 20;

/// Shortest `RESETMAIL_CAPTCHA_SECRET` accepted, in bytes. The key must resist a search: anyone who can
/// read the table knows the answer of a captcha they solved themselves, and so could try keys offline.
pub const SECRET_MIN_BYTES: usize = 32;

/// The key of the stored answers, the same on every api replica so that each can check the others'
/// tickets. Never printed.
#[derive(Clone)]
pub struct CaptchaSecret {
    mac: Hmac<Sha256>,
    /// The key's length in bytes, held to [`SECRET_MIN_BYTES`] where the captcha is built, so that a
    /// refusal need not repeat the key (as a refusal by the flag parser would).
    len: usize,
}

impl CaptchaSecret {
    /// A key from `bytes` (any length; [`GraphicCaptcha::new`] holds operators' keys to a minimum).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        Hmac::new_from_slice(bytes)
            .map(|mac| Self {
                mac,
                len: bytes.len(),
            })
            .map_err(|error| format!("unusable captcha secret: {error}"))
    }

    /// A key of this process alone, from the operating system's CSPRNG.
    fn random() -> anyhow::Result<Self> {
        let mut bytes = [0u8; SECRET_MIN_BYTES];
        getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
        Self::from_bytes(&bytes).map_err(anyhow::Error::msg)
    }
}

impl FromStr for CaptchaSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(text.as_bytes())
    }
}

impl std::fmt::Debug for CaptchaSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaptchaSecret(…)")
    }
}

/// A captcha to show: its ticket and its image as a `data:` URI.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
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
    secret: CaptchaSecret,
}

/// The widest picture the drawing canvas holds (`RESETMAIL_CAPTCHA_WIDTH`'s bound).
pub const MAX_WIDTH: u32 = CANVAS.0;
/// The tallest picture the drawing canvas holds (`RESETMAIL_CAPTCHA_HEIGHT`'s bound).
pub const MAX_HEIGHT: u32 = CANVAS.1;

impl GraphicCaptcha {
    /// The captcha as configured: at most [`MAX_WIDTH`] × [`MAX_HEIGHT`], which the configuration's
    /// own bounds already hold it to.
    pub fn new(config: &CaptchaConfig) -> anyhow::Result<Self> {
        if config.width > MAX_WIDTH || config.height > MAX_HEIGHT {
            bail!("RESETMAIL_CAPTCHA_WIDTH/HEIGHT: at most {MAX_WIDTH}×{MAX_HEIGHT}");
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
        let secret = match (&config.secret, config.kind.unwrap_or(CaptchaKind::Off)) {
            (Some(secret), _) if secret.len < SECRET_MIN_BYTES => bail!(
                "RESETMAIL_CAPTCHA_SECRET is too short: at least {SECRET_MIN_BYTES} random characters (e.g. `openssl rand -hex 32`)"
            ),
            (Some(secret), _) => secret.clone(),
            (None, CaptchaKind::Normal) => bail!(
                "RESETMAIL_CAPTCHA=normal needs RESETMAIL_CAPTCHA_SECRET: at least {SECRET_MIN_BYTES} random characters, the same on every api replica (e.g. `openssl rand -hex 32`)"
            ),
            // `GET /site/captcha` still serves pictures, but with another kind in force no ticket is
            // ever checked: a key of this process's own will do.
            (None, _) => CaptchaSecret::random()?,
        };
        Ok(Self {
            width: config.width,
            height: config.height,
            length: usize::from(config.length),
            ttl: config.ttl,
            secret,
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
        let hash = answer_hash(&self.secret, &ticket, &answer);
        captcha_tickets::insert(pool, &ticket, &hash, self.ttl).await?;
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
            Some(hash) if answer_matches(&self.secret, ticket, answer, &hash) => Ok(()),
            Some(_) => Err(CaptchaError::Failed("wrong captcha answer".into())),
        }
    }
}

/// What is stored for an answer: the HMAC-SHA256, keyed with `secret`, of the ticket and the answer
/// in capitals.
pub fn answer_hash(secret: &CaptchaSecret, ticket: &str, answer: &str) -> [u8; 32] {
    answer_mac(secret, ticket, answer)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `stored` is the hash of `answer` for `ticket`, compared in constant time.
fn answer_matches(secret: &CaptchaSecret, ticket: &str, answer: &str, stored: &[u8]) -> bool {
    answer_mac(secret, ticket, answer)
        .verify_slice(stored)
        .is_ok()
}

fn answer_mac(secret: &CaptchaSecret, ticket: &str, answer: &str) -> Hmac<Sha256> {
    let mut mac = secret.mac.clone();
    mac.update(ticket.as_bytes());
    mac.update(b"\n");
    mac.update(answer.to_uppercase().as_bytes());
    mac
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

    fn secret(text: &str) -> CaptchaSecret {
        CaptchaSecret::from_str(text).unwrap()
    }

    #[test]
    fn answers_compare_without_regard_to_case() {
        let key = secret("0123456789abcdef0123456789abcdef");
        assert_eq!(
            answer_hash(&key, "T", "ab3c"),
            answer_hash(&key, "T", "AB3C")
        );
        assert_ne!(
            answer_hash(&key, "T", "AB3C"),
            answer_hash(&key, "U", "AB3C")
        );
        assert!(answer_matches(
            &key,
            "T",
            "ab3c",
            &answer_hash(&key, "T", "AB3C")
        ));
        assert!(!answer_matches(
            &key,
            "T",
            "AB3D",
            &answer_hash(&key, "T", "AB3C")
        ));
        assert!(!answer_matches(&key, "T", "AB3C", &[]));
    }

    #[test]
    fn the_stored_hash_depends_on_the_secret_and_is_not_the_plain_sha256() {
        use sha2::Digest as _;
        let key = secret("0123456789abcdef0123456789abcdef");
        let stored = answer_hash(&key, "T", "AB3C");
        let unkeyed: [u8; 32] = sha2::Sha256::digest(b"T\nAB3C").into();
        assert_ne!(stored, unkeyed);
        assert_ne!(
            stored,
            answer_hash(&secret("0123456789abcdef0123456789abcdeF"), "T", "AB3C")
        );
    }

    #[test]
    fn a_short_secret_is_refused_at_start_up_without_being_repeated() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            captcha: CaptchaConfig,
        }
        let config =
            Cli::try_parse_from(["api", "--captcha-secret", "only-31-characters-long-secret!"])
                .unwrap()
                .captcha;
        let error = GraphicCaptcha::new(&config)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("too short"), "{error}");
        assert!(!error.contains("only-31"), "{error}");
    }

    #[test]
    fn a_secret_is_never_printed() {
        let key = secret("0123456789abcdef0123456789abcdef");
        assert_eq!(format!("{key:?}"), "CaptchaSecret(…)");
    }
}
