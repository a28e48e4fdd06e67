//! Per-client-IP rate limiting (a token bucket per address), with the client IP read from
//! `X-Forwarded-For` only when the connection comes from a trusted proxy.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    str::FromStr,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::HeaderMap,
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock as _};

use crate::{AppState, error::ApiError};

/// Rate-limit settings.
#[derive(clap::Args, Clone, Debug)]
pub struct RateLimitConfig {
    /// Requests per minute one client IP may make to the api routes, on average.
    #[arg(long = "rate-limit", env = "RESETMAIL_RATE_LIMIT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub per_minute: u32,
    /// Requests one client IP may make in a burst.
    #[arg(long = "rate-burst", env = "RESETMAIL_RATE_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR ranges, comma-separated.
    #[arg(long = "trusted-proxies", env = "RESETMAIL_TRUSTED_PROXIES", value_delimiter = ',', value_parser = IpRange::from_str)]
    pub trusted_proxies: Vec<IpRange>,
}

/// An address range: `10.0.0.0/8`, `::1/128`, or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for IpRange {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (address, prefix) = text
            .split_once('/')
            .map_or((text, None), |(a, p)| (a, Some(p)));
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: bad prefix length"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl IpRange {
    /// Whether `address` is in the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 addresses seen through an IPv6 socket count as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the socket peer, unless the peer is a trusted proxy; then the rightmost
/// `X-Forwarded-For` hop that is not a trusted proxy (hops further left can be forged by the client).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |address: IpAddr| trusted.iter().any(|range| range.contains(address));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok().map(canonical))
        .collect();
    hops.iter()
        .rev()
        .copied()
        .find(|hop| !is_trusted(*hop))
        .or_else(|| hops.first().copied())
        .unwrap_or(peer)
}

/// The limiter: one token bucket per client address.
pub struct RateLimiter {
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    trusted: Vec<IpRange>,
}

impl RateLimiter {
    /// A limiter as configured.
    pub fn new(config: &RateLimitConfig) -> Self {
        let per_minute = NonZeroU32::new(config.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            buckets: DefaultKeyedRateLimiter::keyed(
                Quota::per_minute(per_minute).allow_burst(burst),
            ),
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// Takes a token for `client`, or says how many seconds until one is free.
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        self.buckets.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Forgets addresses whose buckets are full again, so memory stays bounded.
    pub fn forget_idle(&self) {
        self.buckets.retain_recent();
    }
}

/// Middleware: 429 with `Retry-After` when the client's bucket is empty.
pub async fn limit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let client = client_ip(peer.ip(), request.headers(), &state.rate_limiter.trusted);
    match state.rate_limiter.check(client) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => {
            metrics::counter!("resetmail_api_rate_limited_total").increment(1);
            ApiError::RateLimited(retry_after).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = forwarded.parse() {
            headers.insert("x-forwarded-for", value);
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn ranges_match_as_written() {
        let range: IpRange = "10.1.0.0/16"
            .parse()
            .unwrap_or_else(|e: String| panic!("{e}"));
        assert!(range.contains(ip("10.1.200.3")) && !range.contains(ip("10.2.0.1")));
        assert!(
            range.contains(ip("::ffff:10.1.0.9")),
            "IPv4-mapped addresses count as IPv4"
        );
        let single: IpRange = "::1".parse().unwrap_or_else(|e: String| panic!("{e}"));
        assert!(single.contains(ip("::1")) && !single.contains(ip("::2")));
        assert!(
            "10.0.0.0/33".parse::<IpRange>().is_err() && "nonsense".parse::<IpRange>().is_err()
        );
    }

    #[test]
    fn forwarded_for_is_read_only_behind_a_trusted_proxy_and_from_the_right() {
        let trusted = [
            "127.0.0.1"
                .parse()
                .unwrap_or_else(|e: String| panic!("{e}")),
            "10.0.0.0/8"
                .parse()
                .unwrap_or_else(|e: String| panic!("{e}")),
        ];
        // Not from a trusted proxy: the header is the client's own claim, ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // From a trusted proxy: the rightmost untrusted hop; a forged leftmost hop changes nothing.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &headers("6.6.6.6, 198.51.100.7, 10.0.0.2"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers(""), &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers("10.0.0.5"), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers("junk, 198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
    }
}
