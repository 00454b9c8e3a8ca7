//! HS256/384/512 JWT verification with upstream's error texts (PROTOCOL.md §1.6, §9.1, §9.4).
//!
//! Written against the spec rather than with a general JWT library so that every failure maps
//! to exactly one of upstream's messages, in the order upstream checks them.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// The whole claims object (exposed to RLS as `request.jwt.claims`).
    pub raw: Map<String, Value>,
    /// `role`: the Postgres role the token acts as.
    pub role: String,
    /// `exp`, in Unix seconds.
    pub exp: i64,
}

impl Claims {
    /// Seconds until expiry (negative once expired).
    pub fn seconds_left(&self) -> i64 {
        self.exp - now()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No token at all.
    #[error("API key is missing")]
    Missing,
    /// Not three base64url parts of JSON.
    #[error("The token provided is not a valid JWT")]
    Malformed,
    /// The signature does not match the secret.
    #[error("Failed to validate JWT signature")]
    Signature,
    /// An algorithm or key this server cannot verify.
    #[error("{}", signer_message(.kid))]
    Signer {
        /// The `kid` header, if any.
        kid: Option<String>,
    },
    /// `exp` is in the past.
    #[error("Token has expired {seconds_ago} seconds ago")]
    Expired {
        /// How long ago it expired.
        seconds_ago: i64,
    },
    /// `exp` is present but not a number.
    #[error("Token expiration time is invalid")]
    InvalidExpiry,
    /// `role` or `exp` missing.
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingClaims,
}

fn signer_message(kid: &Option<String>) -> String {
    match kid {
        Some(kid) => format!("Failed to generate JWT signer for key ID (kid) \"{kid}\", check your JWT secret or JWKS configuration"),
        None => "Failed to generate JWT signer, check your JWT secret or JWKS configuration".to_owned(),
    }
}

impl JwtError {
    /// The `{"error": ...}` text of a refused WebSocket handshake (HTTP 401).
    pub fn connect_message(&self) -> String {
        match self {
            JwtError::Expired { .. } => "Token has expired".to_owned(),
            other => other.to_string(),
        }
    }

    /// The `reason` of a refused join: `<Code>: <message>`.
    pub fn join_reason(&self) -> String {
        let code = match self {
            JwtError::Missing | JwtError::Malformed => "MalformedJWT",
            JwtError::Signature => "JwtSignatureError",
            JwtError::Signer { .. } => "JwtSignerError",
            JwtError::Expired { .. } | JwtError::InvalidExpiry | JwtError::MissingClaims => {
                "InvalidJWTToken"
            }
        };
        let message = match self {
            JwtError::Missing => JwtError::Malformed.to_string(),
            other => other.to_string(),
        };
        format!("{code}: {message}")
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Verifies tokens against one shared secret.
#[derive(Clone)]
pub struct JwtVerifier {
    secret: Vec<u8>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtVerifier { secret: <redacted> }")
    }
}

impl JwtVerifier {
    /// A verifier for HS256/384/512 tokens signed with `secret`.
    pub fn new(secret: &str) -> Self {
        JwtVerifier {
            secret: secret.as_bytes().to_vec(),
        }
    }

    /// Verify `token`, as upstream does: URL-decoded and trimmed first; signature, then `exp`
    /// and `iat`, then the presence of `role` and `exp`.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let decoded = urlencoding::decode(token)
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| token.to_owned());
        let token = decoded.trim();
        if token.is_empty() {
            return Err(JwtError::Missing);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Map<String, Value> = decode_json(h)?;
        let claims: Map<String, Value> = decode_json(p)?;
        let signature = URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| JwtError::Malformed)?;
        let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
        let signed = &token[..h.len() + 1 + p.len()];
        let ok = match header.get("alg").and_then(Value::as_str) {
            Some("HS256") => check::<Hmac<Sha256>>(&self.secret, signed, &signature),
            Some("HS384") => check::<Hmac<Sha384>>(&self.secret, signed, &signature),
            Some("HS512") => check::<Hmac<Sha512>>(&self.secret, signed, &signature),
            _ => return Err(JwtError::Signer { kid }),
        };
        if !ok {
            return Err(JwtError::Signature);
        }
        let exp = match claims.get("exp") {
            None => None,
            Some(Value::Number(n)) => n.as_f64().map(|f| f.round() as i64),
            Some(_) => return Err(JwtError::InvalidExpiry),
        };
        if let Some(exp) = exp {
            let now = now();
            if exp <= now {
                return Err(JwtError::Expired {
                    seconds_ago: now - exp,
                });
            }
        }
        if matches!(claims.get("iat"), Some(v) if !v.is_number()) {
            return Err(JwtError::Malformed);
        }
        let role = claims
            .get("role")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (role, exp) {
            (Some(role), Some(exp)) => Ok(Claims {
                raw: claims,
                role,
                exp,
            }),
            _ => Err(JwtError::MissingClaims),
        }
    }
}

fn decode_json(part: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

fn check<M: Mac + hmac::digest::KeyInit>(secret: &[u8], signed: &str, signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(signed.as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(signature).is_ok()
}

/// Mint an HS256 token: for tests, examples and the benchmark harness.
pub fn sign_hs256(secret: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let sig = match <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(signed.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_JWT_SECRET;
    use serde_json::json;

    const ANON: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";

    #[test]
    fn supabase_cli_demo_key_verifies() {
        let c = JwtVerifier::new(DEFAULT_JWT_SECRET).verify(ANON).unwrap();
        assert_eq!(c.role, "anon");
        assert_eq!(c.exp, 1_983_812_996);
    }

    #[test]
    fn errors_in_upstream_order() {
        let v = JwtVerifier::new("secret-secret-secret-secret-secret");
        assert_eq!(v.verify(""), Err(JwtError::Missing));
        assert_eq!(v.verify("abc"), Err(JwtError::Malformed));
        assert_eq!(v.verify(ANON), Err(JwtError::Signature));
        let expired = sign_hs256(
            "secret-secret-secret-secret-secret",
            &json!({"role":"anon","exp": now() - 10}),
        );
        assert!(
            matches!(v.verify(&expired), Err(JwtError::Expired { seconds_ago }) if (10..=12).contains(&seconds_ago))
        );
        let no_role = sign_hs256(
            "secret-secret-secret-secret-secret",
            &json!({"exp": now() + 100}),
        );
        assert_eq!(v.verify(&no_role), Err(JwtError::MissingClaims));
        assert_eq!(
            JwtError::Expired { seconds_ago: 3 }.join_reason(),
            "InvalidJWTToken: Token has expired 3 seconds ago"
        );
        assert_eq!(
            JwtError::Expired { seconds_ago: 3 }.connect_message(),
            "Token has expired"
        );
    }

    #[test]
    fn hs384_hs512_and_unknown_alg() {
        let secret = "secret-secret-secret-secret-secret";
        let claims = json!({"role":"authenticated","exp": now() + 100});
        for (alg, ok) in [("HS384", true), ("HS512", true), ("RS256", false)] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            let signed = format!("{header}.{payload}");
            let sig = match alg {
                "HS384" => {
                    let mut m =
                        <Hmac<Sha384> as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
                            .unwrap();
                    m.update(signed.as_bytes());
                    m.finalize().into_bytes().to_vec()
                }
                _ => {
                    let mut m =
                        <Hmac<Sha512> as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
                            .unwrap();
                    m.update(signed.as_bytes());
                    m.finalize().into_bytes().to_vec()
                }
            };
            let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig));
            let r = JwtVerifier::new(secret).verify(&token);
            assert_eq!(r.is_ok(), ok, "{alg}: {r:?}");
        }
    }
}
