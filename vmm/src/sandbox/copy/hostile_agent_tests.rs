//! `krunbox cp` against a scripted agent playing a hostile guest: symlinks planted in the host
//! destination (at the top and deep in a tree, to files and to directories), setuid modes,
//! names that are not single path components, and symlinks beside a host source tree.

use std::collections::HashMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use krunbox_protocol::client::Client;
use krunbox_protocol::frame::FrameCodec;
use krunbox_protocol::generation::CURRENT_GENERATION;
use krunbox_protocol::messages::*;
use tokio_util::codec::Framed;

use super::{from_guest, to_guest, Copied, CopyError};

/// The guest's side: stats, listings (which may hold any names) and file contents.
#[derive(Default, Clone)]
struct Guest {
    stats: HashMap<String, FileStat>,
    listings: HashMap<String, Vec<FileStat>>,
    contents: HashMap<String, Vec<u8>>,
}

fn entry(name: &str, file_type: FileType, mode: u32) -> FileStat {
    FileStat {
        name: name.into(),
        file_type: file_type as i32,
        mode,
        ..FileStat::default()
    }
}

impl Guest {
    fn add(&mut self, path: &str, file_type: FileType, mode: u32) {
        let (parent, name) = path.rsplit_once('/').expect("absolute path");
        let stat = entry(name, file_type, mode);
        self.stats.insert(path.into(), stat.clone());
        let parent = if parent.is_empty() { "/" } else { parent };
        if self.stats.contains_key(parent) {
            self.listings.entry(parent.into()).or_default().push(stat);
        }
        if file_type == FileType::Dir {
            self.listings.entry(path.into()).or_default();
        }
    }

    fn dir(mut self, path: &str, mode: u32) -> Self {
        self.add(path, FileType::Dir, mode);
        self
    }

    fn file(mut self, path: &str, mode: u32, data: &str) -> Self {
        self.add(path, FileType::File, mode);
        self.contents.insert(path.into(), data.as_bytes().to_vec());
        self
    }

    /// A listing entry under any name at all, as a hostile agent may send.
    fn raw_entry(mut self, dir: &str, stat: FileStat) -> Self {
        self.listings.entry(dir.into()).or_default().push(stat);
        self
    }
}

/// What the agent was asked to write: guest path, mode, bytes; and the directories made.
#[derive(Default, Debug)]
struct Written {
    files: Vec<(String, u32, Vec<u8>)>,
    dirs: Vec<String>,
}

fn reply(result: FileResultKind) -> Body {
    Body::FileResult(FileResult {
        result: Some(result),
    })
}

/// Serves `guest` on an in-memory stream; returns a connected client.
async fn agent(guest: Guest) -> (Client, Arc<Mutex<Written>>) {
    let (host_side, agent_side) = tokio::io::duplex(1 << 20);
    let client = tokio::spawn(Client::handshake(host_side));
    let mut peer = Framed::new(agent_side, FrameCodec::new());
    peer.next().await.expect("hello").expect("valid");
    peer.send(Envelope::new(
        0,
        Body::HelloAck(HelloAck {
            generation: CURRENT_GENERATION,
            agent_version: "hostile".into(),
            features: vec![],
            ..Default::default()
        }),
    ))
    .await
    .expect("ack");
    let written = Arc::new(Mutex::new(Written::default()));
    let record = written.clone();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = peer.next().await {
            let Some(Body::File(request)) = frame.body else {
                continue;
            };
            let path = request.path;
            let not_found = Body::Error(ErrorReply::new(ErrorKind::NotFound, path.clone()));
            let answers = match request.op {
                Some(FileOp::Stat(_)) => match guest.stats.get(&path) {
                    Some(stat) => vec![reply(FileResultKind::Stat(stat.clone()))],
                    None => vec![not_found],
                },
                Some(FileOp::List(_)) => match guest.listings.get(&path) {
                    Some(entries) => vec![reply(FileResultKind::Listing(DirListing {
                        entries: entries.clone(),
                    }))],
                    None => vec![not_found],
                },
                Some(FileOp::Read(_)) => {
                    match (guest.stats.get(&path), guest.contents.get(&path)) {
                        (Some(stat), Some(data)) => vec![
                            reply(FileResultKind::Stat(stat.clone())),
                            Body::FileChunk(FileChunk {
                                data: data.clone().into(),
                                eof: true,
                            }),
                        ],
                        _ => vec![not_found],
                    }
                }
                Some(FileOp::Mkdir(_)) => {
                    record.lock().unwrap().dirs.push(path);
                    vec![reply(FileResultKind::Done(FileDone { bytes: 0 }))]
                }
                Some(FileOp::Write(write)) => {
                    let mut data = Vec::new();
                    while let Some(Ok(chunk)) = peer.next().await {
                        if let Some(Body::FileChunk(chunk)) = chunk.body {
                            data.extend_from_slice(&chunk.data);
                            if chunk.eof {
                                break;
                            }
                        }
                    }
                    let bytes = data.len() as u64;
                    record.lock().unwrap().files.push((path, write.mode, data));
                    vec![reply(FileResultKind::Done(FileDone { bytes }))]
                }
                _ => vec![not_found],
            };
            for body in answers {
                if peer.send(Envelope::new(frame.id, body)).await.is_err() {
                    return;
                }
            }
        }
    });
    let client = client.await.expect("join").expect("handshake");
    (client, written)
}

/// A file outside every destination, which no copy may touch.
struct Victim {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
}

impl Victim {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("victim");
        std::fs::write(&file, "precious\n").unwrap();
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        Self {
            file,
            dir: inner,
            _dir: dir,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(std::fs::read_to_string(&self.file).unwrap(), "precious\n");
        assert_eq!(std::fs::read_dir(&self.dir).unwrap().count(), 0);
    }
}

fn regular(path: &Path) -> String {
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(
        meta.file_type().is_file(),
        "{} is not a file",
        path.display()
    );
    std::fs::read_to_string(path).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn a_file_replaces_a_symlink_planted_at_its_name() {
    let victim = Victim::new();
    let dest = tempfile::tempdir().unwrap();
    symlink(&victim.file, dest.path().join("f")).unwrap();
    symlink(&victim.file, dest.path().join("named")).unwrap();
    let (client, _) = agent(Guest::default().file("/f", 0o644, "guest data\n")).await;

    // Into the directory under the source's name, and to a name the user typed.
    from_guest(&client, "/f", dest.path()).await.unwrap();
    from_guest(&client, "/f", &dest.path().join("named"))
        .await
        .unwrap();

    victim.assert_untouched();
    assert_eq!(regular(&dest.path().join("f")), "guest data\n");
    assert_eq!(regular(&dest.path().join("named")), "guest data\n");
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 2);
}

#[tokio::test]
async fn a_tree_does_not_write_through_file_symlinks_deep_inside() {
    let victim = Victim::new();
    let dest = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dest.path().join("t/a/b")).unwrap();
    symlink(&victim.file, dest.path().join("t/a/b/deep")).unwrap();
    symlink(&victim.file, dest.path().join("t/top")).unwrap();
    let guest = Guest::default()
        .dir("/t", 0o755)
        .file("/t/top", 0o644, "top\n")
        .dir("/t/a", 0o755)
        .dir("/t/a/b", 0o755)
        .file("/t/a/b/deep", 0o644, "deep\n");
    let (client, _) = agent(guest).await;

    let copied = from_guest(&client, "/t", dest.path()).await.unwrap();

    victim.assert_untouched();
    assert_eq!(copied.files, 2);
    assert_eq!(regular(&dest.path().join("t/top")), "top\n");
    assert_eq!(regular(&dest.path().join("t/a/b/deep")), "deep\n");
}

#[tokio::test]
async fn a_tree_refuses_directory_symlinks_at_the_top_and_deep_inside() {
    let victim = Victim::new();
    let guest = Guest::default()
        .dir("/t", 0o755)
        .dir("/t/a", 0o755)
        .dir("/t/a/b", 0o755)
        .file("/t/a/b/f", 0o644, "f\n");
    let (client, _) = agent(guest).await;

    for planted in ["t", "t/a", "t/a/b"] {
        let dest = tempfile::tempdir().unwrap();
        let link = dest.path().join(planted);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(&victim.dir, &link).unwrap();

        let err = from_guest(&client, "/t", dest.path()).await.unwrap_err();

        assert!(
            matches!(&err, CopyError::InTheWay { path, found: "a symlink" } if *path == link),
            "{planted}: {err}"
        );
        assert!(err.to_string().contains("not followed"), "{err}");
        victim.assert_untouched();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}

#[tokio::test]
async fn setuid_setgid_and_sticky_bits_from_the_guest_are_dropped() {
    let dest = tempfile::tempdir().unwrap();
    let guest = Guest::default()
        .dir("/t", 0o3777)
        .file("/t/suid", 0o4755, "#!/bin/sh\n")
        .file("/t/sgid", 0o2711, "x")
        .file("/lone", 0o6755, "y");
    let (client, _) = agent(guest).await;

    from_guest(&client, "/t", dest.path()).await.unwrap();
    from_guest(&client, "/lone", dest.path()).await.unwrap();

    // The permission bits stay (under the umask, 022 in tests); the special bits go.
    for (path, _) in [
        ("t", 0o3777),
        ("t/suid", 0o4755),
        ("t/sgid", 0o2711),
        ("lone", 0o6755),
    ] {
        let got = mode(&dest.path().join(path));
        assert_eq!(got & 0o7000, 0, "{path}: {got:o}");
        assert_eq!(got & 0o100, 0o100, "{path}: {got:o}");
    }
}

#[tokio::test]
async fn names_that_are_not_single_components_are_refused() {
    for bad in ["../escaped", "a/b", "/abs", "", ".", "..", "nul\0x"] {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let guest = Guest::default()
            .dir("/t", 0o755)
            .raw_entry("/t", entry(bad, FileType::File, 0o644))
            .raw_entry("/t", entry(bad, FileType::Dir, 0o755));
        let mut guest = guest;
        for stat in guest.listings["/t"].clone() {
            let path = format!("/t/{}", stat.name);
            guest.contents.insert(path.clone(), b"escaped\n".to_vec());
            guest.stats.insert(path, stat);
        }
        let (client, _) = agent(guest).await;

        let err = from_guest(&client, "/t", &dest).await.unwrap_err();

        assert!(
            matches!(&err, CopyError::BadName { name, .. } if name == bad),
            "{bad:?}: {err}"
        );
        // Nothing beside the destination, nothing but the (empty) tree in it.
        let beside: Vec<_> = std::fs::read_dir(outer.path()).unwrap().collect();
        assert_eq!(beside.len(), 1, "{bad:?}: {beside:?}");
        assert_eq!(std::fs::read_dir(dest.join("t")).unwrap().count(), 0);
    }
}

#[tokio::test]
async fn a_guest_symlink_entry_is_skipped_not_created() {
    let dest = tempfile::tempdir().unwrap();
    let mut link = entry("link", FileType::Symlink, 0o777);
    link.symlink_target = "/etc/passwd".into();
    let guest = Guest::default()
        .dir("/t", 0o755)
        .file("/t/f", 0o644, "f")
        .raw_entry("/t", link);
    let (client, _) = agent(guest).await;

    let copied = from_guest(&client, "/t", dest.path()).await.unwrap();

    assert_eq!(
        copied,
        Copied {
            files: 1,
            bytes: 1,
            skipped: 1
        }
    );
    assert!(std::fs::symlink_metadata(dest.path().join("t/link")).is_err());
}

#[tokio::test]
async fn a_host_tree_sends_no_file_behind_a_symlink_or_fifo() {
    let victim = Victim::new();
    std::fs::write(victim.dir.join("secret"), "secret\n").unwrap();
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/plain"), "plain\n").unwrap();
    symlink(&victim.file, tree.join("file-link")).unwrap();
    symlink(&victim.dir, tree.join("sub/dir-link")).unwrap();
    nix::unistd::mkfifo(&tree.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (client, written) = agent(Guest::default().dir("/dst", 0o755)).await;

    let copied = to_guest(&client, &tree, "/dst").await.unwrap();

    assert_eq!(copied.files, 1);
    assert_eq!(copied.skipped, 3);
    let plain_mode = mode(&tree.join("sub/plain"));
    let written = written.lock().unwrap();
    assert_eq!(written.dirs, ["/dst/tree", "/dst/tree/sub"]);
    assert_eq!(
        written.files,
        [(
            "/dst/tree/sub/plain".to_owned(),
            plain_mode,
            b"plain\n".to_vec()
        )]
    );
}
