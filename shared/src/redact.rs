//! Keeping secrets out of logs and `Debug` output.

use std::borrow::Cow;
use std::fmt;

/// A secret value whose `Debug` and `Display` print `***`, so configuration
/// structs can derive `Debug` and be logged without leaking it. Read it with
/// [`Redacted::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a secret.
    pub fn new(secret: T) -> Self {
        Redacted(secret)
    }

    /// The secret itself; call it only where the secret is used.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(secret: T) -> Self {
        Redacted(secret)
    }
}

/// Hides the password of a URL's user info: `redis://app:s3cret@db:6379/0` becomes
/// `redis://app:***@db:6379/0`. URLs without a password come back unchanged.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Cow::Borrowed(url);
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return Cow::Borrowed(url);
    };
    let Some(colon) = authority[..at].find(':') else {
        return Cow::Borrowed(url);
    };
    let pass_start = scheme_end + colon + 1;
    let pass_end = scheme_end + at;
    Cow::Owned(format!("{}***{}", &url[..pass_start], &url[pass_end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_never_prints_its_value() {
        let s = Redacted::new(String::from("hunter2"));
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn hides_passwords_only() {
        assert_eq!(
            redact_url("redis://app:s3cret@db:6379/0"),
            "redis://app:***@db:6379/0"
        );
        assert_eq!(redact_url("rediss://:p@ss@db"), "rediss://:***@db");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://user@db"), "redis://user@db");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
