//! A second local user attacks krunbox's shared fallback directory, `/tmp/krunbox-$UID`.
//!
//! Without `$XDG_RUNTIME_DIR` (always so on macOS) it is the runtime root (per-VM sockets,
//! consoles, locks), and without `$HOME` the data directory (sandboxes, image store) is
//! `/tmp/krunbox-$UID/data`. Any local user can create that path first. Here a real second
//! user, `krunbox-neighbour`, plants it — as a symbolic link into a directory of the victim,
//! or as a world-writable directory of their own — and a real unprivileged victim,
//! `krunbox-victim`, runs krunbox with the defaults (no `KRUNBOX_RUNTIME_DIR`, no
//! `XDG_RUNTIME_DIR` / `HOME` as each test says). krunbox must refuse with an error that
//! names the path and what to do, exit 125, and leave everything as it was: no file written
//! into the attacker's directory, nothing under the link's target created or removed.
//!
//! No guest boots (so this runs where a non-root user cannot boot one): the runtime root is
//! reached by `krunbox run` on the libkrun backend's dry run (`KRUNBOX_KRUN_DRY_RUN=1`),
//! which collects stale run directories before anything else; the data directory by
//! `krunbox ps -a` (the sandbox store) and `krunbox images` (the image store).
//!
//! Needs root (to create the two users and act as them): skipped loudly otherwise, failed
//! when `KRUNBOX_REQUIRE_E2E` is set.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, MutexGuard};

use krunbox_tests::{guest_init_binary, krunbox_binary, local_user, LocalUser};

const ATTACKER: &str = "krunbox-neighbour";
const VICTIM: &str = "krunbox-victim";
/// krunbox's exit code for its own failures.
const FAILURE: i32 = 125;

/// Every test plants at the same `/tmp/krunbox-<victim uid>`: one at a time.
static FALLBACK: Mutex<()> = Mutex::new(());

/// The two users, the victim's files, and the contested path.
struct Scene {
    attacker: LocalUser,
    victim: LocalUser,
    /// `/tmp/krunbox-<victim uid>`.
    fallback: PathBuf,
    /// The victim's own directory (0700), with `precious/keep/file` inside.
    home: PathBuf,
    _workspace: tempfile::TempDir,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Scene {
    fn new(test: &str) -> Option<Self> {
        let attacker = local_user(test, ATTACKER)?;
        let victim = local_user(test, VICTIM)?;
        assert!(
            krunbox_binary().is_file(),
            "{} is missing: run `cargo build -p krunbox`",
            krunbox_binary().display()
        );
        let one_at_a_time = FALLBACK.lock().unwrap_or_else(|p| p.into_inner());
        let fallback = PathBuf::from(format!("/tmp/krunbox-{}", victim.uid));
        clear(&fallback);
        let workspace = tempfile::Builder::new()
            .prefix("kbx-neighbour-")
            .tempdir_in("/tmp")
            .expect("workspace");
        set_mode(workspace.path(), 0o755);
        let home = workspace.path().join("victim");
        for dir in ["", "precious", "precious/keep", "rootfs"] {
            let dir = home.join(dir);
            std::fs::create_dir_all(&dir).expect("victim dir");
            set_mode(&dir, 0o700);
            victim.chown(&dir);
        }
        for file in ["precious/keep/file", "kernel"] {
            std::fs::write(home.join(file), b"mine").expect("victim file");
            victim.chown(&home.join(file));
        }
        Some(Self {
            attacker,
            victim,
            fallback,
            home,
            _workspace: workspace,
            _one_at_a_time: one_at_a_time,
        })
    }

    /// Runs `program ARGS` as the attacker; it must succeed.
    fn attacker_runs(&self, program: &str, args: &[&str]) {
        let out = self
            .attacker
            .command(program)
            .args(args)
            .output()
            .expect("run as the attacker");
        assert!(
            out.status.success(),
            "attacker's {program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The attacker's link from the fallback path to the victim's `precious` directory.
    fn plant_symlink(&self) {
        let target = self.home.join("precious");
        self.attacker_runs("ln", &["-s", path_str(&target), path_str(&self.fallback)]);
    }

    /// The attacker's own world-writable directory at the fallback path, with `inside`
    /// (relative directories) made in it.
    fn plant_directory(&self, inside: &[&str]) {
        self.attacker_runs("mkdir", &["-m", "0777", path_str(&self.fallback)]);
        for dir in inside {
            let dir = self.fallback.join(dir);
            self.attacker_runs("mkdir", &["-p", "-m", "0777", path_str(&dir)]);
        }
    }

    /// `krunbox ARGS` as the victim, with only `PATH` and `env` set.
    fn victim_krunbox(&self, args: &[&str], env: &[(&str, OsString)]) -> Output {
        let mut cmd = self.victim.command(krunbox_binary());
        cmd.args(args).env("KRUNBOX_LOG", "warn");
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.output().expect("run krunbox as the victim")
    }

    /// `krunbox run` up to where it first uses the runtime root: the libkrun dry run on an
    /// empty root filesystem, with the victim's own `HOME` (so the data directory is not in
    /// /tmp) and no runtime setting.
    fn victim_runs_a_vm(&self) -> Output {
        let guest_init =
            guest_init_binary().expect("guest-init is not built: run `cargo xtask build-init`");
        let rootfs = format!("dir:{}", self.home.join("rootfs").display());
        let kernel = self.home.join("kernel");
        self.victim_krunbox(
            &[
                "run",
                "--backend",
                "krun",
                "--kernel",
                path_str(&kernel),
                &rootfs,
                "--",
                "true",
            ],
            &[
                ("HOME", self.home.clone().into()),
                ("KRUNBOX_KRUN_DRY_RUN", "1".into()),
                ("KRUNBOX_GUEST_INIT", guest_init.into()),
            ],
        )
    }

    /// `krunbox ARGS` with neither `HOME` nor `XDG_DATA_HOME`, so the data directory is
    /// `/tmp/krunbox-$UID/data`; the runtime root is a private directory of the victim.
    fn victim_uses_data(&self, args: &[&str]) -> Output {
        let runtime = self.home.join("runtime");
        if !runtime.exists() {
            std::fs::create_dir(&runtime).expect("runtime dir");
            set_mode(&runtime, 0o700);
            self.victim.chown(&runtime);
        }
        self.victim_krunbox(args, &[("XDG_RUNTIME_DIR", runtime.into())])
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        clear(&self.fallback);
    }
}

/// Removes `path` (a link: the link only).
fn clear(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).expect("clear"),
        Ok(_) => std::fs::remove_file(path).expect("clear"),
        Err(_) => {}
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Everything under `root` (not following links): path, kind, owner, mode, size.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let kind = if meta.is_symlink() {
            "link"
        } else if meta.is_dir() {
            "dir"
        } else {
            "file"
        };
        out.push(format!(
            "{} {kind} uid={} mode={:o} size={}",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            if meta.is_dir() { 0 } else { meta.len() }
        ));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("list") {
                todo.push(entry.expect("entry").path());
            }
        }
    }
    out.sort();
    out
}

/// The victim's krunbox failed as krunbox fails, saying each of `needles`.
fn assert_refused(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(FAILURE),
        "krunbox should have refused; stdout: {} stderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
}

#[test]
fn a_planted_runtime_symlink_is_refused_and_nothing_behind_it_removed() {
    let Some(scene) =
        Scene::new("a_planted_runtime_symlink_is_refused_and_nothing_behind_it_removed")
    else {
        return;
    };
    scene.plant_symlink();
    let before = tree(&scene.home.join("precious"));
    let out = scene.victim_runs_a_vm();
    // Stale-run collection used to take `keep` for a dead VM's run directory and remove it.
    assert!(
        scene.home.join("precious/keep/file").is_file(),
        "the victim's krunbox removed a directory behind the link"
    );
    assert_eq!(tree(&scene.home.join("precious")), before);
    let fallback = scene.fallback.display().to_string();
    assert_refused(&out, &[&fallback, "symbolic link", "KRUNBOX_RUNTIME_DIR"]);
    assert!(std::fs::symlink_metadata(&scene.fallback)
        .expect("the link")
        .is_symlink());
}

#[test]
fn a_runtime_directory_of_the_neighbour_is_refused_and_left_empty() {
    let Some(scene) = Scene::new("a_runtime_directory_of_the_neighbour_is_refused_and_left_empty")
    else {
        return;
    };
    scene.plant_directory(&[]);
    let out = scene.victim_runs_a_vm();
    let fallback = scene.fallback.display().to_string();
    let owner = format!("owned by uid {}", scene.attacker.uid);
    let you = format!("(uid {})", scene.victim.uid);
    assert_refused(
        &out,
        &[&fallback, &owner, &you, "0777", "KRUNBOX_RUNTIME_DIR"],
    );
    assert_eq!(
        tree(&scene.fallback),
        [format!(
            "{fallback} dir uid={} mode=777 size=0",
            scene.attacker.uid
        )],
        "the victim wrote into the neighbour's directory"
    );
}

#[test]
fn a_planted_data_symlink_is_refused_and_nothing_behind_it_touched() {
    let Some(scene) = Scene::new("a_planted_data_symlink_is_refused_and_nothing_behind_it_touched")
    else {
        return;
    };
    scene.plant_symlink();
    let before = tree(&scene.home.join("precious"));
    let fallback = scene.fallback.display().to_string();
    for args in [&["ps", "-a"][..], &["images"]] {
        let out = scene.victim_uses_data(args);
        assert_refused(&out, &[&fallback, "symbolic link", "KRUNBOX_DATA_DIR"]);
    }
    // The image store used to be created inside the link's target.
    assert_eq!(tree(&scene.home.join("precious")), before);
}

#[test]
fn a_data_directory_of_the_neighbour_is_refused_and_its_sandboxes_not_trusted() {
    let Some(scene) =
        Scene::new("a_data_directory_of_the_neighbour_is_refused_and_its_sandboxes_not_trusted")
    else {
        return;
    };
    // A sandbox whose state points `exec` and `cp` at the neighbour's socket.
    scene.plant_directory(&["data/sandboxes/evil"]);
    let evil = scene.fallback.join("data/sandboxes/evil");
    for (file, text) in [
        ("sandbox.json", "{}"),
        ("state.json", r#"{"agent_socket":"/tmp/neighbour.sock"}"#),
    ] {
        let path = evil.join(file);
        std::fs::write(&path, text).expect("plant");
        scene.attacker.chown(&path);
    }
    let before = tree(&scene.fallback);
    let fallback = scene.fallback.display().to_string();
    let owner = format!("owned by uid {}", scene.attacker.uid);
    for args in [
        &["ps", "-a"][..],
        &["images"],
        &["exec", "evil", "--", "true"],
    ] {
        let out = scene.victim_uses_data(args);
        assert_refused(&out, &[&fallback, &owner, "KRUNBOX_DATA_DIR"]);
    }
    assert_eq!(tree(&scene.fallback), before, "the victim wrote into it");
}

#[test]
fn without_a_neighbour_the_fallbacks_are_made_private_to_the_user() {
    let Some(scene) = Scene::new("without_a_neighbour_the_fallbacks_are_made_private_to_the_user")
    else {
        return;
    };
    let out = scene.victim_uses_data(&["ps", "-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in [scene.fallback.clone(), scene.fallback.join("data")] {
        let meta = std::fs::symlink_metadata(&dir).expect("made");
        assert!(meta.is_dir(), "{}", dir.display());
        assert_eq!(meta.uid(), scene.victim.uid, "{}", dir.display());
        assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
    }
    // The neighbour can neither look in nor add anything.
    let out = scene
        .attacker
        .command("ls")
        .arg(&scene.fallback)
        .output()
        .expect("ls");
    assert!(!out.status.success());
    let out = scene
        .attacker
        .command("mkdir")
        .arg(scene.fallback.join("data/x"))
        .output()
        .expect("mkdir");
    assert!(!out.status.success());
}

/// Root without `$HOME` uses `/tmp/krunbox-0/data`: the same refusal.
#[test]
fn root_refuses_a_data_directory_of_the_neighbour_too() {
    let Some(scene) = Scene::new("root_refuses_a_data_directory_of_the_neighbour_too") else {
        return;
    };
    let fallback = PathBuf::from("/tmp/krunbox-0");
    if std::fs::symlink_metadata(&fallback).is_ok() {
        // Someone's real directory: not ours to replace.
        eprintln!(
            "SKIPPED root_refuses_a_data_directory_of_the_neighbour_too: {} exists",
            fallback.display()
        );
        return;
    }
    scene.attacker_runs("mkdir", &["-m", "0777", path_str(&fallback)]);
    let runtime = tempfile::tempdir().expect("runtime dir");
    let out = std::process::Command::new(krunbox_binary())
        .args(["ps", "-a"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .expect("run krunbox as root");
    let entries = std::fs::read_dir(&fallback).map(|d| d.count());
    clear(&fallback);
    let owner = format!("owned by uid {}", scene.attacker.uid);
    assert_refused(
        &out,
        &["/tmp/krunbox-0", &owner, "(uid 0)", "KRUNBOX_DATA_DIR"],
    );
    assert_eq!(entries.expect("list"), 0, "root wrote into it");
}
