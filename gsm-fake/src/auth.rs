//! Bearer-token checks, as GSM's front end makes them: tokens the metadata server issued, and
//! self-signed service-account JWTs (google-cloud-auth signs those itself, with a `scope`
//! claim, instead of calling a token endpoint).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use rsa::signature::Verifier;
use serde_json::Value;

use crate::State;

/// The scope a Secret Manager caller must hold.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// How far in the future `iat` may be (clock skew between hosts).
const CLOCK_SKEW_SECS: i64 = 60;

/// A service account whose self-signed JWTs are accepted.
#[derive(Debug)]
pub(crate) struct TrustedKey {
    /// The account (`iss` must name it).
    email: String,
    /// The public half of its key.
    key: VerifyingKey<Sha256>,
}

impl TrustedKey {
    pub(crate) fn new(
        email: &str,
        public_key_pem: &str,
    ) -> Result<TrustedKey, rsa::pkcs8::spki::Error> {
        let key = RsaPublicKey::from_public_key_pem(public_key_pem)?;
        Ok(TrustedKey {
            email: email.to_owned(),
            key: VerifyingKey::new(key),
        })
    }
}

/// Why a request's credentials were refused (the 401's message).
pub(crate) fn refuse(state: &State, authorization: Option<&str>) -> Option<&'static str> {
    let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return Some("Request is missing required authentication credential.");
    };
    if state.tokens.contains(token) {
        return None;
    }
    check_jwt(state, token).err()
}

/// The kind of an accepted bearer token: the fakes' tokens carry it after `ya29.`, anything
/// else accepted is a self-signed JWT.
pub(crate) fn kind(authorization: &str) -> String {
    authorization
        .strip_prefix("Bearer ya29.")
        .and_then(|t| t.split_once('-'))
        .map_or_else(|| "jwt".to_owned(), |(kind, _)| kind.to_owned())
}

fn check_jwt(state: &State, token: &str) -> Result<(), &'static str> {
    const INVALID: &str = "Request had invalid authentication credentials.";
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID);
    };
    let json = |part: &str| -> Result<Value, &'static str> {
        let bytes = B64URL.decode(part).map_err(|_| INVALID)?;
        serde_json::from_slice(&bytes).map_err(|_| INVALID)
    };
    let header = json(header)?;
    if header["alg"] != "RS256" {
        return Err(INVALID);
    }
    let kid = header["kid"].as_str().ok_or(INVALID)?;
    let trusted = state.service_accounts.get(kid).ok_or(INVALID)?;
    let signature = B64URL
        .decode(signature)
        .ok()
        .and_then(|s| Signature::try_from(s.as_slice()).ok())
        .ok_or(INVALID)?;
    let signed = &token[..token.rfind('.').ok_or(INVALID)?];
    trusted
        .key
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| INVALID)?;
    let claims = json(claims)?;
    if claims["iss"] != trusted.email.as_str() {
        return Err(INVALID);
    }
    let scopes = claims["scope"].as_str().unwrap_or_default();
    if !scopes.split(' ').any(|s| s == CLOUD_PLATFORM) {
        return Err("Request had insufficient authentication scopes.");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(INVALID);
    };
    if exp <= now || iat > now + CLOCK_SKEW_SECS {
        return Err("Request had invalid authentication credentials: the token expired.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPrivateKey;
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::signature::{SignatureEncoding, Signer};
    use serde_json::json;

    const EMAIL: &str = "reader@p.iam.gserviceaccount.com";

    fn key() -> RsaPrivateKey {
        RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("key")
    }

    fn jwt(key: &RsaPrivateKey, kid: &str, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        let signed = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let signature = SigningKey::<Sha256>::new(key.clone()).sign(signed.as_bytes());
        format!("{signed}.{}", B64URL.encode(signature.to_bytes()))
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    #[test]
    fn self_signed_jwts_are_checked_like_google_does() {
        let trusted = key();
        let public = trusted
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        let mut state = State::default();
        state.service_accounts.insert(
            "kid-1".into(),
            TrustedKey::new(EMAIL, &public).expect("key"),
        );
        let claims = |iss: &str, scope: &str, iat: i64, exp: i64| json!({"iss": iss, "sub": iss, "scope": scope, "iat": iat, "exp": exp});
        let scope = CLOUD_PLATFORM;
        let t = now();
        let bearer = |token: String| format!("Bearer {token}");
        let good = jwt(&trusted, "kid-1", &claims(EMAIL, scope, t, t + 3600));
        assert_eq!(refuse(&state, Some(&bearer(good))), None);
        for (why, token) in [
            (
                "expired",
                jwt(&trusted, "kid-1", &claims(EMAIL, scope, t - 7200, t - 3600)),
            ),
            (
                "issued in the future",
                jwt(&trusted, "kid-1", &claims(EMAIL, scope, t + 600, t + 4200)),
            ),
            (
                "another issuer",
                jwt(
                    &trusted,
                    "kid-1",
                    &claims("x@p.iam.gserviceaccount.com", scope, t, t + 3600),
                ),
            ),
            (
                "no cloud-platform scope",
                jwt(
                    &trusted,
                    "kid-1",
                    &claims(EMAIL, "https://www.googleapis.com/auth/pubsub", t, t + 3600),
                ),
            ),
            (
                "an unknown kid",
                jwt(&trusted, "kid-2", &claims(EMAIL, scope, t, t + 3600)),
            ),
            (
                "forged: another key",
                jwt(&key(), "kid-1", &claims(EMAIL, scope, t, t + 3600)),
            ),
            ("not a JWT", "ya29.made-up".into()),
        ] {
            assert!(
                refuse(&state, Some(&bearer(token))).is_some(),
                "{why} was accepted"
            );
        }
        assert!(refuse(&state, None).is_some(), "no header");
    }
}
