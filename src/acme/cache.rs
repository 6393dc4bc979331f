//! The cache directory: the account's credentials and each name's certificate with its
//! key, every file written whole (a temporary file renamed over the old one) and
//! readable by the owner only (0600; the directory 0700).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The account file: its credentials and the directory they belong to.
pub(super) const ACCOUNT_FILE: &str = "account.json";

/// The file of `name`'s certificate chain and key (PEM, key first).
pub(super) fn certificate_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

/// Creates `dir` (and its parents) if missing, readable by the owner only.
pub(super) fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `contents` to `path` whole: into a temporary file beside it (0600), synced,
/// then renamed over `path`, so a reader finds the old file or the new one, never a
/// part.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(".sluice-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Reads `path` if it exists; `None` when it does not.
pub(super) fn read(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Splits a cached certificate file into (chain, key), both PEM.
pub(super) fn split(text: &str) -> Option<(String, String)> {
    let mut chain = String::new();
    let mut key = String::new();
    let mut current: Option<&mut String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(if line.contains("PRIVATE KEY") {
                &mut key
            } else {
                &mut chain
            });
        }
        if let Some(target) = current.as_deref_mut() {
            target.push_str(line);
            target.push('\n');
        }
        if line.starts_with("-----END ") {
            current = None;
        }
    }
    (!chain.is_empty() && !key.is_empty()).then_some((chain, key))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn files_are_written_whole_and_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = dir.path().join("acme");
        let path = certificate_path(&cache, "a.example.com");
        write_private(&path, b"one").expect("write");
        write_private(&path, b"two").expect("write over");
        assert_eq!(read(&path).expect("read").as_deref(), Some("two"));
        assert_eq!(fs::metadata(&path).expect("stat").mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&cache).expect("stat").mode() & 0o777, 0o700);
        let left: Vec<_> = fs::read_dir(&cache).expect("list").collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
        assert_eq!(read(&cache.join("none.pem")).expect("read"), None);
    }

    #[test]
    fn a_cached_file_splits_into_chain_and_key() {
        let text = "-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n\
                    -----BEGIN CERTIFICATE-----\nc1\n-----END CERTIFICATE-----\n\
                    -----BEGIN CERTIFICATE-----\nc2\n-----END CERTIFICATE-----\n";
        let (chain, key) = split(text).expect("both");
        assert!(key.contains("\nk\n") && !key.contains("c1"));
        assert!(chain.contains("c1") && chain.contains("c2") && !chain.contains("\nk\n"));
        assert_eq!(
            split("-----BEGIN CERTIFICATE-----\nc\n-----END CERTIFICATE-----\n"),
            None
        );
    }
}
