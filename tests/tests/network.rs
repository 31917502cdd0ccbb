//! The guest network end to end: real guests under the QEMU backend whose virtio-net card is
//! served by krunbox's gateway, real HTTP servers on the host, and the gateway's decision log.
//! See the crate docs for prerequisites.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use krunbox_tests::{e2e, http_server, private_data_dir, text, wait_timeout, Harness};

const CLEANUP: Duration = Duration::from_secs(15);

/// One of this host's non-loopback IPv4 addresses, if it has one.
fn host_lan_address() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    text(&out.stdout).lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next()?.split('/').next()?.parse().ok()
    })
}

fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `wget` of `url` in the guest, printing the body and then `name=EXIT_STATUS`.
fn fetch(name: &str, url: &str) -> String {
    format!("timeout 30 wget -q -O- {url}; rc=$?; echo; echo {name}=$rc; ")
}

#[test]
fn the_default_policy_keeps_the_guest_off_the_host_and_internal_networks() {
    let Some(k) = e2e("the_default_policy_keeps_the_guest_off_the_host_and_internal_networks")
    else {
        return;
    };
    let loopback = http_server(Ipv4Addr::LOCALHOST, "loopback-secret");
    let lan = host_lan_address();
    let lan_port = lan.map(|ip| (ip, http_server(ip, "lan-secret")));
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("net.log");
    let mut script = fetch("loopback", &format!("http://10.0.2.2:{loopback}/"));
    script += &fetch("metadata", "http://169.254.169.254/latest/meta-data/");
    if let Some((ip, port)) = lan_port {
        script += &fetch("lan", &format!("http://{ip}:{port}/"));
    } else {
        eprintln!("this host has no non-loopback IPv4 address: the LAN case is not checked");
    }
    let out = k.run(
        &[
            "--network-log",
            log.to_str().expect("utf-8"),
            "--",
            "sh",
            "-c",
            &script,
        ],
        b"",
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        !stdout.contains("secret"),
        "the guest got through: {stdout}"
    );
    assert!(stdout.contains("loopback=1"), "{stdout}");
    assert!(stdout.contains("metadata=1"), "{stdout}");
    let decisions = read_log(&log);
    assert!(
        decisions.contains(&format!(
            "-> 127.0.0.1:{loopback}: deny (the host's loopback"
        )),
        "{decisions}"
    );
    assert!(
        decisions.contains("-> 169.254.169.254:80: deny (a link-local address"),
        "{decisions}"
    );
    if let Some((ip, port)) = lan_port {
        assert!(stdout.contains("lan=1"), "{stdout}");
        assert!(
            decisions.contains(&format!("-> {ip}:{port}: deny")),
            "{decisions}"
        );
    }
    k.assert_nothing_left(CLEANUP);
}

/// A sandbox with an allowlist: what a rule names is reachable (by address, and by name
/// through the gateway's DNS), the rest is refused, and `krunbox logs --network` shows every
/// decision.
#[test]
fn an_allowlist_allows_exactly_what_it_names_and_logs_every_decision() {
    let Some(k) = e2e("an_allowlist_allows_exactly_what_it_names_and_logs_every_decision") else {
        return;
    };
    let data = private_data_dir();
    let by_address = http_server(Ipv4Addr::LOCALHOST, "allowed-by-address");
    let by_name = http_server(Ipv4Addr::LOCALHOST, "allowed-by-name");
    let denied = http_server(Ipv4Addr::LOCALHOST, "denied-secret");
    let krunbox = |args: &[&str]| -> Output {
        let mut cmd = k.krunbox(args);
        cmd.env("KRUNBOX_DATA_DIR", data.path())
            .stdin(Stdio::null())
            .output()
            .expect("run krunbox")
    };
    let ok = |args: &[&str]| -> String {
        let out = krunbox(args);
        assert!(
            out.status.success(),
            "krunbox {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let allow_net = format!("127.0.0.1/32:{by_address}");
    let allow_host = format!("service.test:{by_name}");
    ok(&[
        "create",
        "--name",
        "allowlist",
        "--memory",
        "256",
        "--allow-net",
        &allow_net,
        "--allow-host",
        &allow_host,
        "--add-host",
        "service.test:127.0.0.1",
        "--add-host",
        "other.test:127.0.0.1",
    ]);
    ok(&["start", "allowlist"]);
    let exec = |script: String| ok(&["exec", "allowlist", "--", "sh", "-c", &script]);
    let by_address_out = exec(fetch("address", &format!("http://10.0.2.2:{by_address}/")));
    assert!(
        by_address_out.contains("allowed-by-address") && by_address_out.contains("address=0"),
        "{by_address_out}"
    );
    let by_name_out = exec(fetch("name", &format!("http://service.test:{by_name}/")));
    assert!(
        by_name_out.contains("allowed-by-name") && by_name_out.contains("name=0"),
        "{by_name_out}"
    );
    let denied_out = exec(fetch("denied", &format!("http://10.0.2.2:{denied}/")));
    assert!(
        !denied_out.contains("secret") && denied_out.contains("denied=1"),
        "{denied_out}"
    );
    // A name no rule allows is not even resolved.
    let other = exec("nslookup other.test 2>&1; echo lookup=$?".into());
    assert!(
        !other.contains("127.0.0.1") && !other.contains("lookup=0"),
        "{other}"
    );
    let decisions = ok(&["logs", "--network", "allowlist"]);
    let by_address_rule = format!("allow (--allow-net {allow_net})");
    let by_name_rule = format!("allow (--allow-host {allow_host}");
    for needles in [
        [format!("127.0.0.1:{by_address}"), by_address_rule],
        [format!("127.0.0.1:{by_name} [service.test]"), by_name_rule],
        [
            format!("127.0.0.1:{denied}"),
            "deny (not in the allowlist)".to_owned(),
        ],
        ["dns other.test".to_owned(), "deny".to_owned()],
    ] {
        assert!(
            decisions
                .lines()
                .any(|line| needles.iter().all(|n| line.contains(n.as_str()))),
            "no line with {needles:?} in {decisions}"
        );
    }
    // The same decisions as records, one JSON object each (the audit log).
    let records: Vec<serde_json::Value> =
        ok(&["logs", "--network", "--format", "json", "allowlist"])
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
    let find = |proto: &str, destination: &str, decision: &str| {
        records.iter().find(|r| {
            r["proto"] == proto && r["destination"] == destination && r["decision"] == decision
        })
    };
    let denied_record = find("tcp", &format!("127.0.0.1:{denied}"), "deny")
        .unwrap_or_else(|| panic!("no denial record in {records:#?}"));
    assert_eq!(denied_record["sandbox"], "allowlist", "{denied_record}");
    assert_eq!(
        denied_record["rule"], "not in the allowlist",
        "{denied_record}"
    );
    assert!(
        denied_record["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("10.0.2.15:")),
        "{denied_record}"
    );
    assert!(denied_record["timestamp"].is_string(), "{denied_record}");
    let by_name_record = find("tcp", &format!("127.0.0.1:{by_name}"), "allow")
        .unwrap_or_else(|| panic!("no allow record in {records:#?}"));
    assert_eq!(by_name_record["name"], "service.test", "{by_name_record}");
    assert!(
        find("dns", "other.test", "deny").is_some(),
        "no DNS denial record in {records:#?}"
    );
    ok(&["rm", "-f", "allowlist"]);
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn network_none_gives_the_guest_no_card() {
    let Some(k) = e2e("network_none_gives_the_guest_no_card") else {
        return;
    };
    // Interfaces backed by a device (a card); libkrunfw's kernel also makes a `dummy0`,
    // which is no card and reaches nothing.
    let cards = "[ -e /sys/class/net/lo ] && echo lo; \
                 for i in /sys/class/net/*; do [ -e \"$i/device\" ] && echo \"card ${i##*/}\"; done; true";
    let out = k.run(&["--network", "none", "--", "sh", "-c", cards], b"");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "lo\n");
    // The control: the default network's card is seen as one.
    let out = k.run(&["--", "sh", "-c", cards], b"");
    assert_eq!(
        text(&out.stdout),
        "lo\ncard eth0\n",
        "stderr: {}",
        text(&out.stderr)
    );
    // Options that need the gateway are refused before anything boots.
    let out = k.run(&["--network", "none", "-p", "8080:80", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("-p needs the default network"));
    k.assert_nothing_left(CLEANUP);
}

#[test]
fn a_published_port_reaches_a_server_in_the_guest() {
    let Some(k) = e2e("a_published_port_reaches_a_server_in_the_guest") else {
        return;
    };
    let host_port = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address").port()
    };
    let publish = format!("{host_port}:8080");
    let mut child = spawn(
        &k,
        &[
            "run",
            "-p",
            &publish,
            "--",
            "sh",
            "-c",
            "echo from-the-guest | nc -l -p 8080",
        ],
    );
    // The gateway accepts at once; until the guest listens, the connection closes empty.
    let deadline = Instant::now() + Duration::from_secs(120);
    let reply = loop {
        let mut reply = String::new();
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", host_port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.read_to_string(&mut reply);
        }
        if !reply.is_empty() || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(reply, "from-the-guest\n");
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status}");
    // The host port is released with the VM.
    assert!(TcpListener::bind(("127.0.0.1", host_port)).is_ok());
    k.assert_nothing_left(CLEANUP);
}

fn spawn(k: &Harness, args: &[&str]) -> std::process::Child {
    k.krunbox(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn krunbox")
}

/// `--network tsi` (libkrun only): the libkrun VMM opens the guest's sockets itself, so the
/// guest reaches what the host's own processes reach (its loopback included: nothing of the
/// gateway's policy applies, SECURITY.md says so). QEMU has no such mode and refuses it before
/// anything boots.
#[test]
fn network_tsi_reaches_the_host_through_libkrun_and_is_refused_by_qemu() {
    let Some(k) = e2e("network_tsi_reaches_the_host_through_libkrun_and_is_refused_by_qemu") else {
        return;
    };
    let port = http_server(Ipv4Addr::LOCALHOST, "through-tsi");
    let script = fetch("tsi", &format!("http://127.0.0.1:{port}/"));
    let out = k.run(&["--network", "tsi", "--", "sh", "-c", &script], b"");
    if krunbox_tests::backend() == "krun" {
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "through-tsi\ntsi=0\n");
    } else {
        assert_eq!(
            out.status.code(),
            Some(125),
            "stdout: {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stderr).contains("TSI networking needs the libkrun backend"),
            "{}",
            text(&out.stderr)
        );
    }
    k.assert_nothing_left(CLEANUP);
}

/// A CA of the test's own (rcgen), standing for a CA the host trusts and the guest's image
/// does not.
struct TestCa {
    certificate: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "krunbox test interception CA");
        let certificate = params.self_signed(&key).unwrap();
        Self { certificate, key }
    }

    fn pem(&self) -> String {
        self.certificate.pem()
    }
}

/// An HTTPS server on the host's loopback with a certificate for `names` signed by `ca`. It
/// answers every request `HTTP/1.0 200 trusted` with an `X-Echo` header repeating the
/// request's `Authorization` (`none` without one), and keeps each request's head.
struct HttpsServer {
    port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HttpsServer {
    fn start(ca: &TestCa, names: &[&str]) -> Self {
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let leaf = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&leaf_key, &ca.certificate, &ca.key)
            .unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let config = std::sync::Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::default();
        let kept = std::sync::Arc::clone(&heads);
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                let config = config.clone();
                let kept = std::sync::Arc::clone(&kept);
                std::thread::spawn(move || serve_https(config, socket, &kept));
            }
        });
        Self { port, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn serve_https(
    config: std::sync::Arc<rustls::ServerConfig>,
    socket: TcpStream,
    kept: &std::sync::Mutex<Vec<String>>,
) {
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(30)));
    let mut stream = rustls::StreamOwned::new(connection, socket);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match std::io::Read::read(&mut stream, &mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let echo = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "none".into());
    kept.lock().unwrap().push(head);
    let answer = format!("HTTP/1.0 200 trusted\r\nX-Echo: {echo}\r\nContent-Length: 0\r\n\r\n");
    let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
    stream.conn.send_close_notify();
    let _ = std::io::Write::flush(&mut stream);
}

/// The host's CA bundle (`SSL_CERT_FILE` for krunbox): `pem`, in a directory of its own.
fn host_bundle(pem: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let host = tempfile::tempdir().unwrap();
    let bundle = host.path().join("bundle.pem");
    std::fs::write(&bundle, pem).unwrap();
    (host, bundle)
}

/// A busybox root with `applets`, `/tls-probe`, and the system's CAs as the image's own
/// trust (not the test's CA).
fn tls_rootfs(applets: &[&str]) -> tempfile::TempDir {
    use krunbox_tests::ssh_agent_fixture::{busybox_rootfs, copy_program_into};
    let rootfs = busybox_rootfs();
    let probe = std::path::Path::new(env!("CARGO_BIN_EXE_tls-probe"));
    copy_program_into(rootfs.path(), probe, std::path::Path::new("/tls-probe"));
    for applet in applets {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.path().join("bin").join(applet));
    }
    let image_bundle = rootfs.path().join("etc/ssl/certs");
    std::fs::create_dir_all(&image_bundle).unwrap();
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        image_bundle.join("ca-certificates.crt"),
    )
    .unwrap();
    rootfs
}

#[test]
fn host_ca_makes_the_guest_trust_what_the_host_trusts() {
    let Some(k) = e2e("host_ca_makes_the_guest_trust_what_the_host_trusts") else {
        return;
    };
    let ca = TestCa::new();
    let port = HttpsServer::start(&ca, &["10.0.2.2"]).port;
    let ca_pem = ca.pem();
    // The host's bundle: the test's CA (as a host that intercepts TLS has its proxy's CA).
    let (_host, bundle) = host_bundle(&ca_pem);
    let rootfs = tls_rootfs(&["cat", "grep"]);
    let allow = format!("127.0.0.1:{port}");
    let run = |extra: &[&str], script: &str| {
        let mut args = vec!["run", "--allow-net", &allow];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[rootfs.path().to_str().unwrap(), "--", "sh", "-c", script]);
        let out = k
            .krunbox(&args)
            .env("SSL_CERT_FILE", &bundle)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        text(&out.stdout)
    };
    // `; true`: the probe's own refusal is an answer, not a failure of the run.
    let probe_it = format!("/tls-probe 10.0.2.2:{port} 10.0.2.2; true");

    // Without --host-ca the guest trusts its image's CAs only: the server is refused.
    let untrusted = run(&[], &probe_it);
    assert!(
        untrusted.starts_with("refused: tls: ") && untrusted.contains("UnknownIssuer"),
        "{untrusted}"
    );

    // With it: the same client, unchanged, trusts it; the bundle is the host's, read-only.
    let script = format!(
        "echo \"$SSL_CERT_FILE $NODE_EXTRA_CA_CERTS $REQUESTS_CA_BUNDLE\"; {probe_it}; \
         grep -c 'BEGIN CERTIFICATE' \"$SSL_CERT_FILE\"; \
         if echo x >> \"$SSL_CERT_FILE\"; then echo writable; else echo read-only; fi"
    );
    let trusted = run(&["--host-ca"], &script);
    let bundle_in_guest = "/run/krunbox/host-ca/ca-certificates.crt";
    assert_eq!(
        trusted.lines().collect::<Vec<_>>(),
        [
            format!("{bundle_in_guest} {bundle_in_guest} {bundle_in_guest}").as_str(),
            "HTTP/1.0 200 trusted",
            "1",
            "read-only",
        ],
        "{trusted}"
    );
    // A command that names its own bundle keeps it.
    let own = run(
        &["--host-ca", "-e", "SSL_CERT_FILE=/etc/own.pem"],
        "echo $SSL_CERT_FILE",
    );
    assert_eq!(own, "/etc/own.pem\n");
    // A host "bundle" without certificates is refused before anything boots.
    std::fs::write(&bundle, "no certificates here\n").unwrap();
    let out = k
        .krunbox(["run", "--host-ca", "--", "true"])
        .env("SSL_CERT_FILE", &bundle)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("is not a CA bundle"),
        "{}",
        text(&out.stderr)
    );
    k.assert_nothing_left(CLEANUP);
}

/// Every file under `root` (not following symlinks) whose bytes contain `needle`.
fn files_containing(root: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

#[test]
fn a_secret_goes_to_its_host_only_and_never_into_the_guest() {
    let Some(mut k) = e2e("a_secret_goes_to_its_host_only_and_never_into_the_guest") else {
        return;
    };
    let data = k.private_data_dir();
    k.use_data_dir(data.path());
    // Two servers whose certificates come from a CA the host trusts (SSL_CERT_FILE, which
    // the gateway verifies real servers with) and the image does not.
    let ca = TestCa::new();
    let api = HttpsServer::start(&ca, &["api.test"]);
    let other = HttpsServer::start(&ca, &["other.test"]);
    let (_host, bundle) = host_bundle(&ca.pem());
    let rootfs = tls_rootfs(&["cat", "grep", "env", "find", "tr", "xargs"]);
    const VALUE: &str = "sk-test-0b5e7c-the-real-value-9d41";
    let secret = format!("API_KEY@api.test:{}", api.port);
    let (allow_api, allow_other) = (
        format!("api.test:{}", api.port),
        format!("other.test:{}", other.port),
    );
    let rootfs_arg = rootfs.path().to_str().unwrap();
    let create_args = [
        "create",
        "--name",
        "agent",
        "--secret",
        &secret,
        "--add-host",
        "api.test:127.0.0.1",
        "--add-host",
        "other.test:127.0.0.1",
        "--allow-host",
        &allow_api,
        "--allow-host",
        &allow_other,
        // The other server is trusted the ordinary way, through the host's CAs.
        "--host-ca",
        rootfs_arg,
    ];
    let krunbox = |args: &[&str], value: Option<&str>| {
        let mut cmd = k.krunbox(args);
        cmd.env("SSL_CERT_FILE", &bundle).stdin(Stdio::null());
        match value {
            Some(value) => cmd.env("API_KEY", value),
            None => cmd.env_remove("API_KEY"),
        };
        cmd.output().unwrap()
    };

    // The value comes from the environment only: without it nothing boots.
    let unset = krunbox(&create_args, None);
    assert_eq!(unset.status.code(), Some(125), "{}", text(&unset.stderr));
    assert!(
        text(&unset.stderr).contains("the environment variable API_KEY is not set"),
        "{}",
        text(&unset.stderr)
    );
    let created = krunbox(&create_args, Some(VALUE));
    assert_eq!(created.status.code(), Some(0), "{}", text(&created.stderr));
    let started = krunbox(&["start", "agent"], Some(VALUE));
    assert_eq!(started.status.code(), Some(0), "{}", text(&started.stderr));

    let placeholder = "krunbox-secret-API_KEY-placeholder";
    let script = format!(
        "echo \"key=$API_KEY\"; \
         /tls-probe api.test:{} api.test \"Authorization: Bearer $API_KEY\"; \
         /tls-probe other.test:{} other.test \"Authorization: Bearer $API_KEY\"; \
         grep -c 'BEGIN CERTIFICATE' \"$SSL_CERT_FILE\" >/dev/null && echo bundle=$SSL_CERT_FILE",
        api.port, other.port
    );
    let out = krunbox(&["exec", "agent", "--", "sh", "-c", &script], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[0], format!("key={placeholder}"));
    // The secret's host: through the gateway, which sent the value and gave back a
    // placeholder where the server echoed it.
    assert!(
        lines[1].starts_with("HTTP/1.") && lines[1].contains(" 200"),
        "{lines:?}"
    );
    assert_eq!(
        lines[2].to_lowercase(),
        format!("x-echo: bearer {placeholder}").to_lowercase()
    );
    // Another host: the placeholder as it is, untouched.
    assert_eq!(lines[3], "HTTP/1.0 200 trusted");
    assert_eq!(lines[4], format!("X-Echo: Bearer {placeholder}"));
    assert_eq!(lines[5], "bundle=/run/krunbox/trust/ca-certificates.crt");
    let api_heads = api.heads();
    assert_eq!(api_heads.len(), 1, "{api_heads:?}");
    assert!(
        api_heads[0].contains(&format!("authorization: Bearer {VALUE}\r\n")),
        "the secret's host got the value: {api_heads:?}"
    );
    let other_heads = other.heads();
    assert_eq!(other_heads.len(), 1, "{other_heads:?}");
    assert!(
        other_heads[0].contains(&format!("Authorization: Bearer {placeholder}\r\n"))
            && !other_heads[0].contains(VALUE),
        "another host got only the placeholder: {other_heads:?}"
    );

    // The value is nowhere in the guest: not in any process's environment, the kernel's
    // command line, or a file of its root, /run or /tmp (the guest prints them all; the
    // test looks for the value, which the guest never had to be told).
    let dump = "cat /proc/cmdline; for e in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $e; done; \
                find /etc /run /tmp /root -type f | xargs cat; echo dumped";
    let out = krunbox(&["exec", "agent", "--", "sh", "-c", dump], None);
    let dumped = text(&out.stdout);
    assert!(dumped.ends_with("dumped\n"), "{}", text(&out.stderr));
    assert!(dumped.contains(placeholder));
    assert!(!dumped.contains(VALUE), "the guest can read the value");
    // Of the VM's host processes only the gateway holds it: not QEMU, virtiofsd or the
    // libkrun VMM (the process a guest that escaped would be in), nor their supervisor.
    let mut holders = Vec::new();
    for process in krunbox_tests::processes_mentioning(k.runtime_dir()) {
        let pid = process.split(':').next().unwrap_or_default().to_owned();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()) {
            holders.push(process);
        }
    }
    assert!(
        holders.len() == 1 && holders[0].contains(" __net "),
        "the value is in the environment of {holders:?}"
    );
    // Nor in krunbox's own state, logs (console, gateway, monitor) or run directories.
    let logs = krunbox(&["logs", "--network", "agent"], None);
    assert!(
        text(&logs.stdout).contains("secret API_KEY: TLS terminated by the gateway"),
        "{}",
        text(&logs.stdout)
    );
    for root in [data.path(), k.runtime_dir()] {
        let found = files_containing(root, VALUE.as_bytes());
        assert!(found.is_empty(), "the value is in {found:?}");
    }

    // A restart needs the value again, from the environment of the command that boots it.
    assert_eq!(krunbox(&["stop", "agent"], None).status.code(), Some(0));
    let restart = krunbox(&["start", "agent"], None);
    assert_ne!(restart.status.code(), Some(0));
    assert!(
        text(&restart.stderr).contains("API_KEY is not set"),
        "{}",
        text(&restart.stderr)
    );
    assert_eq!(krunbox(&["rm", "-f", "agent"], None).status.code(), Some(0));
    for root in [data.path(), k.runtime_dir()] {
        let found = files_containing(root, VALUE.as_bytes());
        assert!(found.is_empty(), "the value is in {found:?}");
    }
    // `run` takes it the same way.
    let run = krunbox(
        &["run", "--secret", &secret, rootfs_arg, "--", "true"],
        None,
    );
    assert_eq!(run.status.code(), Some(125));
    assert!(
        text(&run.stderr).contains("API_KEY is not set"),
        "{}",
        text(&run.stderr)
    );
    k.assert_nothing_left(CLEANUP);
}
