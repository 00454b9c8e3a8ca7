//! Access tokens: the provider callback, and when to ask it again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// The future a [`TokenProvider`] returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// A callback asked for a fresh access token before each (re)join and shortly before the
/// current token expires (read from its `exp` claim). It runs on its own task, never on the
/// connection task, so a slow provider delays only the refresh.
///
/// ```
/// use supa_realtime::TokenProvider;
///
/// let provider = TokenProvider::new(|| async { Ok::<_, String>("eyJ...".to_owned()) });
/// # let _ = provider;
/// ```
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    /// Wrap an async closure returning a token or an error message.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(f())))
    }

    /// Ask for a token.
    pub fn fetch(&self) -> TokenFuture {
        (self.0)()
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenProvider")
    }
}

/// The `exp` claim of a JWT (seconds since the epoch), without verifying it.
pub fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64()
        .or_else(|| exp.as_f64().map(|f| f.max(0.0).round() as u64))
}

/// How long from now to ask for a fresh token: 80 % of the remaining lifetime, but never
/// more than 60 s before expiry. `None` when the token has no `exp`.
pub(crate) fn refresh_delay(token: &str, now: SystemTime) -> Option<Duration> {
    let exp = jwt_exp(token)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
    let remaining_ms = (exp * 1000).saturating_sub(now);
    let by_fraction = remaining_ms * 8 / 10;
    let by_margin = remaining_ms.saturating_sub(60_000);
    Some(Duration::from_millis(by_fraction.max(by_margin)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"HS256"}"#),
            e.encode(claims)
        )
    }

    #[test]
    fn exp_is_read() {
        assert_eq!(
            jwt_exp(&token_with(r#"{"exp":1983812996,"role":"anon"}"#)),
            Some(1983812996)
        );
        assert_eq!(jwt_exp(&token_with(r#"{"exp":12.6}"#)), Some(13));
        assert_eq!(jwt_exp(&token_with(r#"{"role":"anon"}"#)), None);
        assert_eq!(jwt_exp("sb_publishable_abc"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
    }

    #[test]
    fn refresh_before_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let short = token_with(r#"{"exp":1000010}"#);
        assert_eq!(refresh_delay(&short, now), Some(Duration::from_secs(8)));
        let long = token_with(r#"{"exp":1003600}"#);
        assert_eq!(refresh_delay(&long, now), Some(Duration::from_secs(3540)));
        let expired = token_with(r#"{"exp":999000}"#);
        assert_eq!(refresh_delay(&expired, now), Some(Duration::ZERO));
    }
}
