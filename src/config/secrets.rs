//! Secrets in the configuration: the [`Secret`] wrapper that never prints its value, and the
//! Valkey password file that a mounted secret provides.

use super::Config;
use std::path::Path;

/// A value that must not be printed: its `Debug` says `[redacted]`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A configured secret file that could not be read. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} {path}")]
pub struct SecretFileError {
    /// What the file is for.
    what: &'static str,
    /// The configured path.
    path: String,
    /// The operating system's reason.
    #[source]
    source: std::io::Error,
}

impl Config {
    /// The Valkey password from `--valkey-password-file`, if one is configured. Read when
    /// the store is built (not when the configuration is parsed), so that a rotated secret
    /// is picked up by the next start.
    pub fn valkey_password(&self) -> Result<Option<Secret>, SecretFileError> {
        self.valkey_password_file
            .as_deref()
            .map(read_password)
            .transpose()
    }
}

/// The password in `path`: the whole file but one trailing line ending.
fn read_password(path: &Path) -> Result<Secret, SecretFileError> {
    let error = |what, source| SecretFileError {
        what,
        path: path.display().to_string(),
        source,
    };
    let bytes = std::fs::read(path).map_err(|source| error("the Valkey password file", source))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        error(
            "the Valkey password file (not UTF-8)",
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        )
    })?;
    // Mounted secrets often end in one newline that is not part of the password; nothing
    // else is changed.
    let password = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    Ok(Secret(password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::chain;

    /// A file under a directory of its own, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, content: &[u8]) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("barazo-secrets-test-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join("password");
            std::fs::write(&path, content).expect("write");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn one_trailing_line_ending_is_not_part_of_the_password() {
        for (name, content, password) in [
            ("lf", &b"hunter2\n"[..], "hunter2"),
            ("crlf", b"hunter2\r\n", "hunter2"),
            ("none", b"hunter2", "hunter2"),
            ("two", b"hunter2\n\n", "hunter2\n"),
            ("spaces", b" hunter2 \n", " hunter2 "),
            ("empty", b"", ""),
        ] {
            let file = TempFile::new(name, content);
            assert_eq!(read_password(&file.0).expect("readable").expose(), password);
        }
    }

    #[test]
    fn an_unreadable_file_is_named_and_its_content_never_shown() {
        let file = TempFile::new("latin1", b"hunter\xe9\n");
        let err = chain(&read_password(&file.0).expect_err("not UTF-8"));
        assert_eq!(
            err,
            format!(
                "cannot read the Valkey password file (not UTF-8) {}: invalid data",
                file.0.display()
            )
        );
        assert!(!err.contains("hunter"), "{err}");
        let missing = file.0.with_file_name("missing");
        let err = chain(&read_password(&missing).expect_err("missing"));
        assert!(
            err.starts_with(&format!(
                "cannot read the Valkey password file {}: ",
                missing.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn no_file_configured_is_no_password() {
        let config = crate::config::load_from(["barazo-session"]).expect("defaults");
        assert!(config.valkey_password().expect("nothing to read").is_none());
    }

    #[test]
    fn a_secret_never_prints() {
        let secret: Secret = "hunter2".parse().expect("infallible");
        assert_eq!(format!("{secret:?}"), "[redacted]");
    }
}
