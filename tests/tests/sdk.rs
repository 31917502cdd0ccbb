//! Embedding krunbox: `krunbox serve` and `krunbox mcp` with real clients — the Node.js SDK
//! (`node --test`), the Python SDK and the official MCP client library (pytest) — against
//! real sandboxes; the README's examples; and the server's doors attacked from outside.
//!
//! The SDKs' own dependencies come from `scripts/setup-sdk.sh` (run by `scripts/test.sh`):
//! `sdk/node/node_modules` and its build, and a Python virtual environment in
//! `target/sdk-venv`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use krunbox_image::auth::Credentials;
use krunbox_image::local_registry::{LocalRegistry, LocalRegistryOptions};
use krunbox_image::reference::Reference;
use krunbox_tests::{e2e, krunbox_binary, local_user, text, Harness};

#[path = "shared/test_image.rs"]
mod test_image;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

/// Where the SDKs and their toolchains are.
struct Sdks {
    python: PathBuf,
    node: PathBuf,
    /// `sdk/node`, built (`$KRUNBOX_SDK_NODE_DIR` when it was staged elsewhere, as
    /// `scripts/test-as-user.sh` does for a user who cannot read the checkout).
    node_dir: PathBuf,
}

fn skip_or_fail(test: &str, why: &str) {
    assert!(
        std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
        "KRUNBOX_REQUIRE_E2E is set but {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// The Node.js SDK, built, and `node`; `None` after a loud skip.
fn node_sdk(test: &str) -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("KRUNBOX_SDK_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("sdk/node"));
    let built = dir.join("dist/esm/index.js").is_file() && dir.join("node_modules/ws").is_dir();
    match krunbox_tests::ssh_agent_fixture::on_path("node") {
        Some(node) if built => Some((node, dir)),
        _ => {
            skip_or_fail(
                test,
                "the Node.js SDK is not set up (run scripts/setup-sdk.sh)",
            );
            None
        }
    }
}

/// Both SDKs; `None` after a loud skip.
fn sdks(test: &str) -> Option<Sdks> {
    let (node, node_dir) = node_sdk(test)?;
    let python = workspace().join("target/sdk-venv/bin/python");
    if !python.is_file() {
        skip_or_fail(
            test,
            "the Python SDK is not set up (run scripts/setup-sdk.sh)",
        );
        return None;
    }
    Some(Sdks {
        python,
        node,
        node_dir,
    })
}

/// `krunbox serve` on a socket in the test's runtime directory; stopped on drop.
struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    fn start(k: &Harness, args: &[&str]) -> Self {
        let socket = k.runtime_dir().join("api.sock");
        let child = k
            .krunbox(["serve"].iter().chain(args))
            // The Python suite's secret, in the server's environment only.
            .env("KRUNBOX_SDK_TEST_SECRET", "sdk-secret-value")
            .env_remove("KRUNBOX_SDK_UNSET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn krunbox serve");
        let server = Self { child, socket };
        if !args.contains(&"--listen") {
            wait_for(|| server.socket.exists(), "krunbox serve to listen");
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_passed(out: &Output, suite: &str) {
    let stdout = text(&out.stdout);
    let summary: Vec<&str> = stdout.lines().rev().take(12).collect();
    eprintln!("{suite}:");
    for line in summary.iter().rev() {
        eprintln!("  {line}");
    }
    assert!(
        out.status.success(),
        "{suite} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The environment a client needs to use this test's krunbox (the harness's, as a command
/// it would run gets it).
fn client(k: &Harness, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    k.pass_environment(&mut cmd);
    let bin_dir = krunbox_binary()
        .parent()
        .expect("the binary is in a directory")
        .to_owned();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin_dir];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).expect("a PATH"))
        .env("KRUNBOX_BIN", krunbox_binary())
        .env_remove("KRUNBOX_URL")
        .env_remove("KRUNBOX_API_TOKEN");
    cmd
}

/// The test image, pushed to a registry of its own; returns its reference.
fn pushed_test_image(registry: &LocalRegistry, dir: &Path) -> String {
    let layout = dir.join("layout");
    test_image::write_image(&layout);
    let image = format!("{}/sdk/img:{}", registry.address(), test_image::TAG);
    let target = Reference::parse(&image).expect("a reference");
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(krunbox_image::push::push_layout(
            &layout,
            Some(test_image::TAG),
            &target,
            &Credentials::Anonymous,
        ))
        .expect("push the test image");
    image
}

#[test]
fn the_python_sdk_and_the_mcp_server_pass_their_suites_against_real_sandboxes() {
    let test = "the_python_sdk_and_the_mcp_server_pass_their_suites_against_real_sandboxes";
    let Some(mut k) = e2e(test) else { return };
    let Some(sdks) = sdks(test) else { return };
    // Its own sandboxes and images: lists the suite checks are not changed by other tests.
    let data = k.private_data_dir();
    k.use_data_dir(data.path());
    assert!(
        LocalRegistry::binary().is_some() || std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
        "KRUNBOX_REQUIRE_E2E is set but docker-registry is not installed"
    );
    let registry = LocalRegistry::binary()
        .map(|_| LocalRegistry::start(&LocalRegistryOptions::default()).expect("registry"));
    let work = tempfile::tempdir().expect("a temp dir");
    let server = Server::start(&k, &[]);
    let mut pytest = client(&k, &sdks.python);
    pytest
        .args(["-m", "pytest", "-q", "-x", "-rs", "-p", "no:cacheprovider"])
        .arg(workspace().join("sdk/python/tests"))
        .env("KRUNBOX_SOCKET", &server.socket)
        .env("KRUNBOX_SDK_TEST_OS_RELEASE", test_image::OS_RELEASE);
    if let Some(registry) = &registry {
        pytest.env(
            "KRUNBOX_SDK_TEST_IMAGE",
            pushed_test_image(registry, work.path()),
        );
    }
    assert_passed(
        &pytest.output().expect("run pytest"),
        "pytest sdk/python/tests",
    );
}

#[test]
fn the_node_sdk_passes_its_suite_against_real_sandboxes() {
    let test = "the_node_sdk_passes_its_suite_against_real_sandboxes";
    let Some(mut k) = e2e(test) else { return };
    let Some((node, node_dir)) = node_sdk(test) else {
        return;
    };
    let data = k.private_data_dir();
    k.use_data_dir(data.path());
    let server = Server::start(&k, &[]);
    let out = client(&k, &node)
        .args(["--test", "test/"])
        .current_dir(node_dir)
        .env("KRUNBOX_SOCKET", &server.socket)
        .output()
        .expect("run node --test");
    assert_passed(&out, "node --test sdk/node/test");
}

/// The README's "Embedding" examples are the files in `sdk/*/examples`, verbatim; each runs
/// as a user would run it, with no server given (the SDK starts a private one).
#[test]
fn the_readme_examples_run_as_written() {
    let test = "the_readme_examples_run_as_written";
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let examples = [
        ("sdk/node/examples/quickstart.mjs", "Node"),
        ("sdk/python/examples/quickstart.py", "Python"),
    ];
    for (file, _) in examples {
        let code = std::fs::read_to_string(workspace().join(file)).expect("an example");
        assert!(
            readme.contains(code.trim_end()),
            "README.md does not show {file} as it is"
        );
    }
    let Some(k) = e2e(test) else { return };
    let Some(sdks) = sdks(test) else { return };
    for (file, language) in examples {
        let (program, path) = if file.ends_with(".py") {
            (&sdks.python, workspace().join(file))
        } else {
            (&sdks.node, sdks.node_dir.join("examples/quickstart.mjs"))
        };
        let out = client(&k, program)
            .arg(&path)
            .current_dir(path.parent().expect("examples/"))
            .env_remove("KRUNBOX_SOCKET")
            .output()
            .expect("run the example");
        assert_passed(&out, file);
        assert_eq!(
            text(&out.stdout),
            format!("hello from Linux, {language}\nexit code 0\n"),
            "{file}"
        );
    }
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/stdout", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let body = text(&out.stdout);
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn the_api_lets_in_only_its_user_or_the_bearer_of_its_token() {
    let test = "the_api_lets_in_only_its_user_or_the_bearer_of_its_token";
    let Some(k) = e2e(test) else { return };
    // The Unix socket: 0600, and another local user cannot even connect.
    let server = Server::start(&k, &[]);
    let socket = server.socket.to_str().expect("a UTF-8 path").to_owned();
    let mode = std::fs::metadata(&server.socket)
        .expect("the socket")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let (code, _) = curl(&["--unix-socket", &socket, "http://krunbox/v1/version"]);
    assert_eq!(code, 200);
    // A page in the user's browser (it sends Origin) is refused even on the user's socket.
    let (code, body) = curl(&[
        "--unix-socket",
        &socket,
        "-H",
        "Origin: http://attacker.test",
        "http://krunbox/v1/sandboxes",
    ]);
    assert_eq!((code, body.contains("cross_origin")), (403, true), "{body}");
    // A second server on the same socket is refused, and the first keeps serving.
    let second = k
        .krunbox(["serve", "--socket", &socket])
        .output()
        .expect("run a second krunbox serve");
    assert!(!second.status.success());
    assert!(text(&second.stderr).contains("already listens"));
    assert_eq!(
        curl(&["--unix-socket", &socket, "http://krunbox/v1/version"]).0,
        200
    );
    if let Some(other) = local_user(test, "krunbox-api-other") {
        let out = other
            .command("curl")
            .args([
                "-s",
                "--unix-socket",
                &socket,
                "http://krunbox/v1/sandboxes",
            ])
            .output()
            .expect("curl as another user");
        assert!(
            !out.status.success(),
            "another user reached the API: {}",
            text(&out.stdout)
        );
    }
    drop(server);

    // TCP: only with the token, compared whole.
    let token_file = k.runtime_dir().join("token");
    std::fs::write(&token_file, "correct-horse-battery-staple\n").expect("write the token");
    // A token file others can read is refused.
    assert_refused_at_start(&k, &token_file, "others can read");
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod the token file");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _tcp = Server::start(
        &k,
        &[
            "--listen",
            &listen,
            "--token-file",
            token_file.to_str().expect("UTF-8"),
        ],
    );
    let url = format!("http://{listen}/v1/sandboxes");
    wait_for(
        || std::net::TcpStream::connect(&listen).is_ok(),
        "the TCP listener",
    );
    for (header, expected) in [
        (None, 401),
        (Some("Authorization: Bearer wrong"), 401),
        (
            Some("Authorization: Bearer correct-horse-battery-stapl"),
            401,
        ),
        (
            Some("Authorization: Bearer correct-horse-battery-staple"),
            200,
        ),
    ] {
        let mut args = vec![url.as_str()];
        if let Some(header) = header {
            args.extend(["-H", header]);
        }
        assert_eq!(curl(&args).0, expected, "{header:?}");
    }
    // The exec WebSocket is behind the same door.
    let (code, _) = curl(&[
        &format!("http://{listen}/v1/sandboxes/any/exec"),
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]);
    assert_eq!(code, 401);
    // The Node.js SDK over TCP on IPv6 (`http://[::1]:PORT`): the right token lists, a wrong
    // one is unauthorized.
    if let Some((node, node_dir)) = node_sdk(test) {
        let port = free_port();
        let listen = format!("[::1]:{port}");
        let _tcp6 = Server::start(
            &k,
            &[
                "--listen",
                &listen,
                "--token-file",
                token_file.to_str().expect("UTF-8"),
            ],
        );
        wait_for(
            || std::net::TcpStream::connect(&listen).is_ok(),
            "the IPv6 listener",
        );
        let script = "const { Krunbox } = require('./dist/cjs/index.js');\n\
            const [url, token] = process.argv.slice(1);\n\
            Krunbox.connect({ url, token }).then((kb) => kb.list())\n\
              .then((list) => console.log('listed', list.length), (err) => console.log(err.kind));";
        let sdk_list = |token: &str| {
            let out = client(&k, &node)
                .args(["-e", script, &format!("http://{listen}"), token])
                .current_dir(&node_dir)
                .output()
                .expect("run node");
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout)
        };
        assert!(
            sdk_list("correct-horse-battery-staple").starts_with("listed "),
            "the SDK could not list over IPv6"
        );
        assert_eq!(sdk_list("wrong-token-of-some-length"), "unauthorized\n");
    }
    // A short token is refused at start.
    std::fs::write(&token_file, "short").expect("write the token");
    assert_refused_at_start(&k, &token_file, "shorter than 16");
}

/// `krunbox serve` on TCP with `token_file` does not start, and says `why`.
fn assert_refused_at_start(k: &Harness, token_file: &Path, why: &str) {
    let out = k
        .krunbox([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().expect("UTF-8"),
        ])
        .output()
        .expect("run krunbox serve");
    assert!(!out.status.success(), "krunbox serve started");
    assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `krunbox serve` ends cleanly on a hangup (its socket removed), unless it was started
/// ignoring hangups as `nohup` starts programs: then it outlives the terminal and still
/// answers, and SIGTERM ends it.
#[test]
fn serve_ends_on_a_hangup_unless_started_with_nohup() {
    let test = "serve_ends_on_a_hangup_unless_started_with_nohup";
    let Some(k) = e2e(test) else { return };
    let hang_up = |child: &Child, signal| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .expect("signal krunbox serve")
    };
    let start = |ignore_hangups: bool| {
        let mut cmd = k.krunbox(["serve"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        if ignore_hangups {
            // SAFETY: between fork and exec the closure only calls signal(2), which is
            // async-signal-safe, on the child's own dispositions.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::signal(libc::SIGHUP, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn krunbox serve");
        let socket = k.runtime_dir().join("api.sock");
        wait_for(|| socket.exists(), "krunbox serve to listen");
        (child, socket)
    };
    let version = |socket: &Path| {
        curl(&[
            "--unix-socket",
            socket.to_str().expect("UTF-8"),
            "http://krunbox/v1/version",
        ])
        .0
    };

    let (mut child, socket) = start(false);
    hang_up(&child, nix::sys::signal::Signal::SIGHUP);
    let status = krunbox_tests::wait_timeout(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed");

    let (mut child, socket) = start(true);
    hang_up(&child, nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(version(&socket), 200, "it outlives the hangup and answers");
    hang_up(&child, nix::sys::signal::Signal::SIGTERM);
    let status = krunbox_tests::wait_timeout(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status}");
}
