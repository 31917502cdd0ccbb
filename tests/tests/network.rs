//! The guest network end to end: real guests under the QEMU backend whose virtio-net card is
//! served by krunbox's gateway, real HTTP servers on the host, and the gateway's decision log.
//! See the crate docs for prerequisites.

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

/// An HTTPS server on the host's loopback whose certificate (for 10.0.2.2, where the guest
/// reaches the host) is signed by a CA of the test's own; returns its port and the CA's PEM.
fn https_server_with_its_own_ca() -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "krunbox test interception CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["10.0.2.2".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
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
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut stream = rustls::StreamOwned::new(connection, socket);
                let mut request = [0u8; 1024];
                if std::io::Read::read(&mut stream, &mut request).is_ok() {
                    let _ = std::io::Write::write_all(
                        &mut stream,
                        b"HTTP/1.0 200 trusted\r\nContent-Length: 0\r\n\r\n",
                    );
                }
                stream.conn.send_close_notify();
                let _ = std::io::Write::flush(&mut stream);
            });
        }
    });
    (port, ca.pem())
}

#[test]
fn host_ca_makes_the_guest_trust_what_the_host_trusts() {
    use krunbox_tests::ssh_agent_fixture::{busybox_rootfs, copy_program_into};
    let Some(k) = e2e("host_ca_makes_the_guest_trust_what_the_host_trusts") else {
        return;
    };
    let (port, ca_pem) = https_server_with_its_own_ca();
    // The host's bundle: the test's CA (as a host that intercepts TLS has its proxy's CA).
    let host = tempfile::tempdir().unwrap();
    let bundle = host.path().join("bundle.pem");
    std::fs::write(&bundle, &ca_pem).unwrap();
    let rootfs = busybox_rootfs();
    let probe = std::path::Path::new(env!("CARGO_BIN_EXE_tls-probe"));
    copy_program_into(rootfs.path(), probe, std::path::Path::new("/tls-probe"));
    for applet in ["cat", "grep"] {
        let link = rootfs.path().join("bin").join(applet);
        let _ = std::os::unix::fs::symlink("busybox", link);
    }
    // The image's own trust: the system's CAs, not the test's.
    let image_bundle = rootfs.path().join("etc/ssl/certs");
    std::fs::create_dir_all(&image_bundle).unwrap();
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        image_bundle.join("ca-certificates.crt"),
    )
    .unwrap();
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
