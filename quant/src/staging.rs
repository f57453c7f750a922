//! Output directories that appear all at once: everything is written into a hidden sibling
//! directory which is renamed into place only when complete, so an interrupted run never
//! leaves a half-written checkpoint under the requested name.

use std::path::{Path, PathBuf};

/// A directory being written; dropped without `commit`, it is removed.
pub struct StagingDir {
    staging: PathBuf,
    target: PathBuf,
    committed: bool,
}

/// Why the output directory cannot be prepared or finalized.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("{0}: already exists (remove it or pass --force)")]
    Exists(PathBuf),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StagingError + '_ {
    move |source| StagingError::Io {
        path: path.to_owned(),
        cause: source,
    }
}

impl StagingDir {
    /// Prepares a staging directory next to `target` (same filesystem, so the final rename
    /// is atomic). Stale staging directories of earlier interrupted runs are removed.
    pub fn new(target: &Path, force: bool) -> Result<Self, StagingError> {
        if target.exists() && !force {
            return Err(StagingError::Exists(target.to_owned()));
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let prefix = format!(".{name}.partial-");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let staging = parent.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        Ok(Self {
            staging,
            target: target.to_owned(),
            committed: false,
        })
    }

    /// Where to write files.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the finished directory to its final name (replacing an old one under --force).
    pub fn commit(mut self) -> Result<PathBuf, StagingError> {
        if self.target.exists() {
            std::fs::remove_dir_all(&self.target).map_err(io(&self.target))?;
        }
        std::fs::rename(&self.staging, &self.target).map_err(io(&self.target))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        {
            let s = StagingDir::new(&target, false).unwrap();
            std::fs::write(s.path().join("a"), b"x").unwrap();
        }
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_renames_and_refuses_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("out");
        let s = StagingDir::new(&target, false).unwrap();
        std::fs::write(s.path().join("a"), b"x").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(target.join("a")).unwrap(), b"x");
        assert!(matches!(
            StagingDir::new(&target, false),
            Err(StagingError::Exists(_))
        ));
    }
}
