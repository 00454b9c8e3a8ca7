//! Authentication: JWT verification and the error texts upstream answers with.

mod jwt;

pub use jwt::{sign_hs256, Claims, JwtError, JwtVerifier};
