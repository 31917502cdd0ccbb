//! `krunbox cp` from a hostile guest: a guest root that can write into the host destination
//! (a `-v` share) plants symlinks there pointing at host files and directories outside it,
//! and sends setuid files; the copy must never write through a link or keep those bits.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use krunbox_tests::{e2e, private_data_dir, text, Harness};

/// One named sandbox of this test, with a read-write share of a host directory at `/share`.
struct SharedBox {
    k: Harness,
    data: tempfile::TempDir,
    share: tempfile::TempDir,
    name: &'static str,
}

impl SharedBox {
    fn start(test: &str, name: &'static str) -> Option<Self> {
        let k = e2e(test)?;
        let b = Self {
            k,
            data: private_data_dir(),
            share: tempfile::tempdir().expect("share dir"),
            name,
        };
        let volume = format!("{}:/share", b.share.path().display());
        b.ok(&["create", "--name", name, "--memory", "256", "-v", &volume]);
        b.ok(&["start", name]);
        Some(b)
    }

    fn out(&self, args: &[&str]) -> Output {
        let mut cmd: Command = self.k.krunbox(args);
        cmd.env("KRUNBOX_DATA_DIR", self.data.path())
            .stdin(Stdio::null())
            .output()
            .expect("run krunbox")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "krunbox {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs `script` as root in the guest.
    fn guest_root(&self, script: &str) {
        self.ok(&["exec", self.name, "-u", "0", "--", "sh", "-c", script]);
    }

    /// `krunbox cp NAME:src dst`.
    fn cp_out(&self, src: &str, dst: &Path) -> Output {
        let src = format!("{}:{src}", self.name);
        self.out(&["cp", &src, dst.to_str().expect("utf-8 path")])
    }

    fn share(&self) -> &Path {
        self.share.path()
    }
}

impl Drop for SharedBox {
    fn drop(&mut self) {
        let _ = self.out(&["rm", "-f", self.name]);
        if !std::thread::panicking() {
            self.k.assert_nothing_left(Duration::from_secs(30));
        }
    }
}

/// A host file and an empty host directory outside the share, which no copy may touch.
struct Victim {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
}

impl Victim {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("victim dir");
        let file = dir.path().join("victim.txt");
        std::fs::write(&file, "the user's precious file\n").expect("victim");
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).expect("victim dir");
        Self {
            file,
            dir: inner,
            _dir: dir,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.file).expect("victim"),
            "the user's precious file\n"
        );
        let inside: Vec<_> = std::fs::read_dir(&self.dir).expect("victim dir").collect();
        assert!(inside.is_empty(), "written outside the share: {inside:?}");
    }
}

fn regular_file(path: &Path) -> String {
    let meta = std::fs::symlink_metadata(path).expect("copied file");
    assert!(
        meta.file_type().is_file(),
        "{} is not a regular file: {:?}",
        path.display(),
        meta.file_type()
    );
    std::fs::read_to_string(path).expect("copied file")
}

#[test]
fn cp_from_the_guest_never_writes_through_symlinks_the_guest_planted_in_the_destination() {
    let Some(b) = SharedBox::start(
        "cp_from_the_guest_never_writes_through_symlinks_the_guest_planted_in_the_destination",
        "cpsym",
    ) else {
        return;
    };
    let victim = Victim::new();
    let (file, dir) = (victim.file.display(), victim.dir.display());
    // The guest makes what will be copied, and plants links (as host paths) in the share:
    // at a file's name, deep in a tree at a file's name, and at a directory's name.
    b.guest_root(&format!(
        "echo guest-data > /tmp/f \
         && mkdir -p /tmp/t/sub/deeper /tmp/u/d && echo deep > /tmp/t/sub/deeper/deep.txt \
         && echo in-d > /tmp/u/d/x \
         && ln -s {file} /share/f \
         && mkdir -p /share/t/sub/deeper && ln -s {file} /share/t/sub/deeper/deep.txt \
         && mkdir -p /share/u && ln -s {dir} /share/u/d"
    ));
    assert!(std::fs::symlink_metadata(b.share().join("f"))
        .expect("planted link visible on the host")
        .is_symlink());

    // A file into the share: the link at its name is replaced by the file.
    let out = b.cp_out("/tmp/f", b.share());
    assert!(out.status.success(), "{}", text(&out.stderr));
    victim.assert_untouched();
    assert_eq!(regular_file(&b.share().join("f")), "guest-data\n");

    // A tree whose deep file name is a link: replaced too.
    let out = b.cp_out("/tmp/t", b.share());
    assert!(out.status.success(), "{}", text(&out.stderr));
    victim.assert_untouched();
    assert_eq!(
        regular_file(&b.share().join("t/sub/deeper/deep.txt")),
        "deep\n"
    );

    // A tree whose directory name is a link: refused, saying so, nothing written through it.
    let out = b.cp_out("/tmp/u", b.share());
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("u/d: a symlink is in the way (not followed or overwritten)"),
        "{err}"
    );
    victim.assert_untouched();
    assert!(std::fs::symlink_metadata(b.share().join("u/d"))
        .expect("link kept")
        .is_symlink());
}

#[test]
fn cp_from_the_guest_drops_setuid_and_setgid_bits() {
    let Some(b) = SharedBox::start("cp_from_the_guest_drops_setuid_and_setgid_bits", "cpsuid")
    else {
        return;
    };
    b.guest_root(
        "printf '#!/bin/sh\\nid\\n' > /tmp/suid && chmod 4755 /tmp/suid \
         && mkdir -p /tmp/tree && cp /tmp/suid /tmp/tree/suid && chmod 4755 /tmp/tree/suid \
         && cp /tmp/suid /tmp/tree/sgid && chmod 2711 /tmp/tree/sgid \
         && chmod 3777 /tmp/tree && stat -c %a /tmp/suid /tmp/tree/sgid",
    );
    let host = tempfile::tempdir().expect("host dir");

    let out = b.cp_out("/tmp/suid", host.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = b.cp_out("/tmp/tree", host.path());
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mode = |p: &str| {
        std::fs::symlink_metadata(host.path().join(p))
            .expect("copied")
            .permissions()
            .mode()
            & 0o7777
    };
    for path in ["suid", "tree/suid", "tree/sgid", "tree"] {
        assert_eq!(mode(path) & 0o7000, 0, "{path}: {:o}", mode(path));
    }
    // The permission bits themselves are kept (under the umask).
    assert_eq!(mode("suid") & 0o700, 0o700);
    assert_eq!(mode("tree/sgid") & 0o711, 0o711);
}
