//! The Ed25519 key lula-auth signs session tokens with, and the publication of
//! its public half in Redis, where hubs (and other auth replicas) find it by
//! the token's `kid`.
//!
//! Hubs only ever hold public keys, so a compromised hub cannot mint tokens.
//! Without a configured key each instance generates its own at start; because
//! every instance publishes its key, replicas and restarts need no shared
//! secret, and tokens signed by a stopped instance stay verifiable until they
//! expire (the published key outlives the longest token by [`KEY_GRACE`]).

use std::time::Duration;

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lula_protocol::keys::AuthKeys;
use lula_protocol::token::{self, Claims};
use redis::aio::ConnectionLike;

/// How much longer than the token lifetime a published key stays in Redis
/// after its last refresh.
pub const KEY_GRACE: Duration = Duration::from_secs(600);
/// How often a running lula-auth refreshes its published key.
pub const KEY_REFRESH: Duration = Duration::from_secs(60);

/// A signing key with its key id.
pub struct Signer {
    encoding: EncodingKey,
    public: [u8; 32],
    kid: String,
}

impl Signer {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_signing_key(&SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
    }

    /// A key from PKCS#8 PEM text (`-----BEGIN PRIVATE KEY-----`), as written by
    /// `openssl genpkey -algorithm ed25519`.
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem.trim())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("signing key is not an Ed25519 PKCS#8 PEM private key")?;
        Ok(Self::from_signing_key(&key))
    }

    fn from_signing_key(key: &SigningKey) -> Self {
        let public = key.verifying_key().to_bytes();
        // Encoding a 32-byte key as PKCS#8 DER cannot fail.
        let der = key
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        Signer {
            encoding: EncodingKey::from_ed_der(&der),
            public,
            kid: token::kid_for(&public),
        }
    }

    /// The key id tokens name in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Signs `claims` as an EdDSA JWT naming this key.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).context("sign token")
    }

    /// Publishes the public key at `lula-auth:key:<kid>`, expiring `token_ttl`
    /// plus [`KEY_GRACE`] from now.
    pub async fn publish<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &AuthKeys,
        token_ttl: Duration,
    ) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(keys.verify_key(&self.kid))
            .arg(token::encode_public_key(&self.public))
            .arg("EX")
            .arg((token_ttl + KEY_GRACE).as_secs().max(1))
            .query_async(conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lula_protocol::token::{AUDIENCE, ISSUER};

    /// What `openssl genpkey -algorithm ed25519` writes.
    fn generate_pem() -> String {
        SigningKey::from_bytes(&rand::random::<[u8; 32]>())
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap()
            .to_string()
    }

    #[test]
    fn pem_keys_round_trip_and_tokens_verify_with_the_public_half() {
        let pem = generate_pem();
        let a = Signer::from_pem(&pem).unwrap();
        let b = Signer::from_pem(&pem).unwrap();
        assert_eq!(a.kid(), b.kid());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            sub: "dev-1".parse().unwrap(),
            sid: "s".into(),
            iat: now,
            exp: now + 60,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        };
        let t = a.sign(&claims).unwrap();
        assert_eq!(token::kid_of(&t).unwrap(), a.kid());
        assert_eq!(token::verify(&t, &a.public_key()).unwrap(), claims);
        assert!(token::verify(&t, &Signer::generate().public_key()).is_err());
    }

    #[test]
    fn garbage_pem_is_refused() {
        assert!(Signer::from_pem("not a key").is_err());
    }
}
