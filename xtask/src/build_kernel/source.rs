//! The kernel source: Debian's `linux-source-<series>` binary package, fetched with apt.
//!
//! The package carries the source as `/usr/src/linux-source-<series>.tar.xz`. It is
//! downloaded with `apt-get download` (no other download), unpacked with `dpkg-deb -x` and
//! `tar`, and kept as one tree per package version under the cache:
//!
//! ```text
//! <cache>/src/linux-source-6.1_6.1.192-2.deb
//! <cache>/src/6.1.192-2/linux-source-6.1/     the tree (read-only use: builds go to O=)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::workspace;

/// A source package resolved to the version apt would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePackage {
    /// `linux-source-6.1`.
    pub name: String,
    /// `6.1.192-2` (apt's candidate version).
    pub version: String,
}

impl SourcePackage {
    /// The candidate version of `name` from apt's lists (`apt-cache show --no-all-versions`);
    /// needs no network.
    pub fn resolve(name: &str) -> anyhow::Result<Self> {
        let out = Command::new("apt-cache")
            .args(["show", "--no-all-versions", name])
            .output()
            .context("cannot run apt-cache (is this Debian or Ubuntu?)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        match candidate_version(&text) {
            Some(version) if out.status.success() => Ok(Self {
                name: name.to_owned(),
                version,
            }),
            _ => bail!(
                "apt does not know {name} (run `apt-get update`?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// `linux-source-6.1.tar.xz`: the tarball in /usr/src, named after the package, unpacks
    /// to a directory of the package's name.
    fn tarball(&self) -> String {
        format!("{}.tar.xz", self.name)
    }

    /// The unpacked tree for this version, downloading and unpacking it first if needed.
    /// Trees of other versions are removed once the new one is in place.
    pub fn tree(&self, cache: &Path) -> anyhow::Result<PathBuf> {
        let src = cache.join("src");
        let version_dir = src.join(&self.version);
        let tree = version_dir.join(&self.name);
        if tree.join("Makefile").is_file() {
            return Ok(tree);
        }
        std::fs::create_dir_all(&src).with_context(|| format!("create {}", src.display()))?;
        let deb = self.download(&src)?;
        let staging = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&src)
            .with_context(|| format!("create a directory in {}", src.display()))?;
        eprintln!("build-kernel: unpacking {}", deb.display());
        workspace::run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(staging.path().join("deb")),
        )?;
        let tarball = staging.path().join("deb/usr/src").join(self.tarball());
        if !tarball.is_file() {
            bail!(
                "{} has no usr/src/{}",
                deb.display(),
                tarball.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        let unpacked = staging.path().join("tree");
        std::fs::create_dir_all(&unpacked)?;
        workspace::run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .arg("-C")
                .arg(&unpacked),
        )?;
        if !unpacked.join(&self.name).join("Makefile").is_file() {
            bail!("{} did not unpack to {}/", tarball.display(), self.name);
        }
        if version_dir.exists() {
            std::fs::remove_dir_all(&version_dir)
                .with_context(|| format!("remove the partial {}", version_dir.display()))?;
        }
        std::fs::rename(&unpacked, &version_dir)
            .with_context(|| format!("move the tree to {}", version_dir.display()))?;
        self.remove_other_versions(&src);
        Ok(tree)
    }

    /// `apt-get download name=version` into `src`, once.
    fn download(&self, src: &Path) -> anyhow::Result<PathBuf> {
        let deb = src.join(format!("{}_{}.deb", self.name, self.version));
        if deb.is_file() {
            return Ok(deb);
        }
        let staging = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(src)
            .with_context(|| format!("create a directory in {}", src.display()))?;
        eprintln!(
            "build-kernel: apt-get download {}={}",
            self.name, self.version
        );
        workspace::run(
            Command::new("apt-get")
                .args(["download", "-q"])
                .arg(format!("{}={}", self.name, self.version))
                .current_dir(staging.path()),
        )?;
        let downloaded = std::fs::read_dir(staging.path())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no .deb for {}", self.name))?;
        std::fs::rename(&downloaded, &deb)
            .with_context(|| format!("move {} to {}", downloaded.display(), deb.display()))?;
        Ok(deb)
    }

    /// Drops the packages and trees of other versions (about 1.6 GB each).
    fn remove_other_versions(&self, src: &Path) {
        let Ok(entries) = std::fs::read_dir(src) else {
            return;
        };
        let keep_deb = format!("{}_{}.deb", self.name, self.version);
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let old_deb = name.starts_with(&format!("{}_", self.name)) && *name != *keep_deb;
            let old_tree = path.is_dir() && !name.starts_with('.') && *name != *self.version;
            if old_deb || old_tree {
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if let Err(err) = removed {
                    eprintln!("build-kernel: cannot remove {}: {err}", path.display());
                }
            }
        }
    }
}

/// The `Version:` field of `apt-cache show --no-all-versions` output.
fn candidate_version(apt_cache_show: &str) -> Option<String> {
    apt_cache_show
        .lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_candidate_version_is_read_from_apt_cache_show() {
        let out =
            "Package: linux-source-6.1\nSource: linux\nVersion: 6.1.192-2\nInstalled-Size: 136\n";
        assert_eq!(candidate_version(out).as_deref(), Some("6.1.192-2"));
        assert_eq!(candidate_version("N: Unable to locate package x\n"), None);
    }

    #[test]
    fn the_package_names_the_tarball() {
        let package = SourcePackage {
            name: "linux-source-6.1".into(),
            version: "6.1.192-2".into(),
        };
        assert_eq!(package.tarball(), "linux-source-6.1.tar.xz");
    }
}
