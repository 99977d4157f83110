//! Authentication: passwords (argon2id), access tokens (JWT, HS256 only), rotating
//! refresh tokens, personal API tokens, and the `Auth` extractor that verifies them.

pub mod extract;
pub mod limits;
pub mod oidc;
pub mod password;
pub mod tokens;

pub use extract::{Auth, AuthUser};
pub use tokens::JwtKeys;
