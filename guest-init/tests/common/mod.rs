//! Starting the real agent in host mode for a test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use krunbox_protocol::client::Client;
use krunbox_protocol::transport::AgentAddress;

/// A running agent; killed when dropped.
#[allow(dead_code)] // each test binary uses a different part
pub struct TestAgent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl TestAgent {
    pub fn start() -> Self {
        Self::start_with(|cmd| cmd)
    }

    /// Starts the agent through `wrap`, which may put a launcher in front (e.g. `unshare`).
    pub fn start_with(wrap: impl FnOnce(Vec<String>) -> Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let argv = wrap(vec![
            env!("CARGO_BIN_EXE_guest-init").to_owned(),
            "--listen".to_owned(),
            format!("unix:{}", socket.display()),
            "--log".to_owned(),
            std::env::var("AGENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ]);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .spawn()
            .expect("start guest-init");
        Self { child, dir, socket }
    }

    pub fn address(&self) -> AgentAddress {
        AgentAddress::Unix(self.socket.clone())
    }

    pub async fn client(&self) -> Client {
        Client::connect_with_retry(&self.address(), Duration::from_secs(20))
            .await
            .expect("connect to the agent")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SHA-256 by the system's `sha256sum`: the test binaries are unoptimised, and hashing
/// 100 MB in them takes longer than the transfer being checked.
#[allow(dead_code)] // each test binary uses a different part
pub struct Sha256Sum {
    child: Child,
}

#[allow(dead_code)]
impl Sha256Sum {
    pub fn new() -> Self {
        let child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sha256sum");
        Self { child }
    }

    pub fn update(&mut self, data: &[u8]) {
        use std::io::Write;
        self.child
            .stdin
            .as_mut()
            .expect("sha256sum stdin")
            .write_all(data)
            .expect("feed sha256sum");
    }

    /// The hex digest.
    pub fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().expect("sha256sum result");
        assert!(out.status.success(), "sha256sum failed");
        digest_of(&out.stdout)
    }
}

fn digest_of(sha256sum_output: &[u8]) -> String {
    String::from_utf8_lossy(sha256sum_output)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

/// The hex SHA-256 of a file, by `sha256sum`.
#[allow(dead_code)]
pub fn sha256_file(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    digest_of(&out.stdout)
}
