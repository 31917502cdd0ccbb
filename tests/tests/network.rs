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
