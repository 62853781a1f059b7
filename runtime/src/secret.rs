//! Secrets read from files, the `_FILE` form of every secret flag.
//!
//! A secret given as a flag shows in `ps` to every local user, and one given
//! in the environment shows in `/proc/<pid>/environ` to root and in whatever
//! launched the process. A file readable only by the service's user shows
//! nowhere: systemd's `LoadCredential=`, Kubernetes secret volumes and Docker
//! secrets all hand secrets over as files. So each binary takes
//! `--<secret>-file` / `<SECRET>_FILE` beside (and exclusive of) the inline form,
//! and refuses a file that others may read, the way ssh refuses an open private
//! key: a secret that leaked on the box is not a secret any more, and failing
//! loudly is the only way the operator learns.
//!
//! Two strictness levels, because the two places secrets come from differ:
//! - [`Readers::Owner`] (the device daemon): a device is a shared Unix box
//!   with a package-made service user; only that user may read its secrets.
//! - [`Readers::OwnerAndGroup`] (the cloud services): Kubernetes mounts secret
//!   volumes group-readable for the pod's `fsGroup` (our manifests use
//!   `defaultMode: 0440`), so the group is the pod itself; world-readable is
//!   still refused.

use std::path::{Path, PathBuf};

/// Who besides the owner may read a secret file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// Only the owner (mode 0600 or 0400).
    Owner,
    /// The owner and its group (e.g. 0640, 0440), never others.
    OwnerAndGroup,
}

impl Readers {
    /// Permission bits that make a file too open at this level.
    fn forbidden(self) -> u32 {
        match self {
            Readers::Owner => 0o077,
            Readers::OwnerAndGroup => 0o007,
        }
    }
}

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be read.
    #[error("read secret file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Users other than the allowed [`Readers`] may read the file.
    #[error(
        "secret file {} is readable by other users (mode {mode:o}); run chmod 600 on it",
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds nothing but whitespace.
    #[error("secret file {} is empty", .0.display())]
    Empty(PathBuf),
}

/// The secret in `path`: its content without surrounding whitespace (the
/// trailing newline `echo` and editors add is not part of the secret).
///
/// Refused if the file's mode lets more than `readers` read it.
pub fn read_secret_file(path: &Path, readers: Readers) -> Result<String, SecretFileError> {
    let io = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & readers.forbidden() != 0 {
            return Err(SecretFileError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretFileError::Empty(path.to_owned()));
    }
    Ok(secret.to_owned())
}

/// A secret given inline or as a file (clap makes the two exclusive); `None`
/// when neither was given.
pub fn secret_value(
    inline: Option<String>,
    file: Option<&Path>,
    readers: Readers,
) -> Result<Option<String>, SecretFileError> {
    match file {
        Some(path) => read_secret_file(path, readers).map(Some),
        None => Ok(inline),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn file_with(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_private_file_gives_its_content_without_the_newline() {
        let (_dir, path) = file_with("JBSWY3DPEHPK3PXP\n", 0o600);
        assert_eq!(
            read_secret_file(&path, Readers::Owner).unwrap(),
            "JBSWY3DPEHPK3PXP"
        );
        let (_dir, path) = file_with("s3cret\r\n", 0o400);
        assert_eq!(
            secret_value(Some("inline".into()), Some(&path), Readers::Owner).unwrap(),
            Some("s3cret".into())
        );
        assert_eq!(
            secret_value(Some("inline".into()), None, Readers::Owner).unwrap(),
            Some("inline".into())
        );
        assert_eq!(secret_value(None, None, Readers::Owner).unwrap(), None);
        let (_dir, path) = file_with("s3cret", 0o440);
        assert_eq!(
            read_secret_file(&path, Readers::OwnerAndGroup).unwrap(),
            "s3cret"
        );
    }

    #[test]
    fn an_open_empty_or_missing_file_is_refused_with_its_path() {
        let cases = [
            (Readers::Owner, 0o640),
            (Readers::Owner, 0o604),
            (Readers::Owner, 0o644),
            (Readers::OwnerAndGroup, 0o604),
            (Readers::OwnerAndGroup, 0o644),
        ];
        for (readers, mode) in cases {
            let (_dir, path) = file_with("s3cret", mode);
            let err = read_secret_file(&path, readers).unwrap_err();
            assert!(
                matches!(err, SecretFileError::TooOpen { mode: m, .. } if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        let (_dir, path) = file_with(" \n", 0o600);
        assert!(matches!(
            read_secret_file(&path, Readers::Owner),
            Err(SecretFileError::Empty(_))
        ));
        let err =
            read_secret_file(Path::new("/nonexistent/lula-secret"), Readers::Owner).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/lula-secret"),
            "{err}"
        );
    }
}
