//! What the guest's root filesystem is: a directory given by the user, or the built-in
//! default image.
//!
//! [`resolve_rootfs`] is the one place that turns the IMAGE argument into a directory; the
//! image store (registry pulls, OCI layouts) plugs in here. Until then the default image is a
//! busybox root built on first use at `$DATA/images/default/rootfs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why there is no root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The argument is not a directory.
    #[error(
        "{0}: not a directory (only root filesystem directories are supported as IMAGE so far)"
    )]
    NotADirectory(PathBuf),
    /// busybox is needed to build the default image.
    #[error("the default image needs a static busybox to build: install busybox-static (apt-get install busybox-static)")]
    NoBusybox,
    /// busybox is not statically linked.
    #[error("{0} is dynamically linked; the default image needs busybox-static")]
    BusyboxNotStatic(PathBuf),
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Tool {
        /// The command.
        command: String,
        /// Why.
        detail: String,
    },
    /// A file operation.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The image lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The root filesystem directory for IMAGE (`None`: the built-in default image).
pub fn resolve_rootfs(image: Option<&str>) -> Result<PathBuf, RootfsError> {
    match image {
        Some(dir) => {
            let path = PathBuf::from(dir);
            if !path.is_dir() {
                return Err(RootfsError::NotADirectory(path));
            }
            std::fs::canonicalize(&path).map_err(io("resolve", &path))
        }
        None => default_image(&crate::paths::data_dir()),
    }
}

/// `$DATA/images/default/rootfs`, built on first use.
pub fn default_image(data: &Path) -> Result<PathBuf, RootfsError> {
    let images = data.join("images/default");
    let rootfs = images.join("rootfs");
    if rootfs.join("bin/busybox").is_file() {
        return Ok(rootfs);
    }
    std::fs::create_dir_all(&images).map_err(io("create", &images))?;
    let _lock = crate::lock::exclusive(&images.join(".lock"))?;
    if rootfs.join("bin/busybox").is_file() {
        return Ok(rootfs);
    }
    let busybox = crate::paths::find_program("busybox").ok_or(RootfsError::NoBusybox)?;
    let staged = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&images)
        .map_err(io("create a directory in", &images))?;
    build_busybox_rootfs(staged.path(), &busybox, "krunbox default image")?;
    std::fs::rename(staged.path(), &rootfs).map_err(io("move into place", &rootfs))?;
    // The rename moved the directory: nothing left for the TempDir to remove.
    let _ = staged.keep();
    Ok(rootfs)
}

/// Builds a minimal root filesystem in `dir`: a static busybox with a link per applet, the
/// usual top-level directories, and the few files programs expect in /etc.
pub fn build_busybox_rootfs(dir: &Path, busybox: &Path, name: &str) -> Result<(), RootfsError> {
    if !crate::elf::is_static_executable(busybox) {
        return Err(RootfsError::BusyboxNotStatic(busybox.to_owned()));
    }
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "root", "home",
        "var/tmp",
    ] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(io("create", &path))?;
    }
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    set_mode(&tmp, 0o1777)?;
    let target = dir.join("bin/busybox");
    std::fs::copy(busybox, &target).map_err(io("copy busybox to", &target))?;
    set_mode(&target, 0o755)?;
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| RootfsError::Tool {
            command: format!("{} --list-full", busybox.display()),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            command: format!("{} --list-full", busybox.display()),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        // `--list-full` gives e.g. `usr/bin/env`; link each to /bin/busybox.
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet.ends_with("/busybox") || applet.contains("..") {
            continue;
        }
        let link = dir.join(applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).map_err(io("link", &link))?;
    }
    let files: [(&str, String); 6] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .into(),
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n".into()),
        ("etc/hostname", "krunbox\n".into()),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n".into()),
        (
            "etc/os-release",
            format!("NAME=\"{name}\"\nID=krunbox\nPRETTY_NAME=\"{name} (busybox)\"\n"),
        ),
        (
            "etc/profile",
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n".into(),
        ),
    ];
    for (file, contents) in files {
        let path = dir.join(file);
        std::fs::write(&path, contents).map_err(io("write", &path))?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let err = resolve_rootfs(Some("/nonexistent/rootfs")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/rootfs: not a directory (only root filesystem directories are supported as IMAGE so far)"
        );
    }

    #[test]
    fn the_busybox_rootfs_has_applets_and_etc() {
        let Some(busybox) = crate::paths::find_program("busybox") else {
            eprintln!("SKIPPED: busybox is not installed");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        build_busybox_rootfs(dir.path(), &busybox, "test").unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        let os = std::fs::read_to_string(dir.path().join("etc/os-release")).unwrap();
        assert!(os.contains("ID=krunbox"));
        assert!(dir.path().join("tmp").is_dir());
    }
}
