//! DNS rebinding through an allowlist: the guest is allowed one name, and that name's real
//! DNS answer (from a DNS server on the host's loopback, the gateway's upstream through
//! `KRUNBOX_DNS_SERVER`) is internal — the host's loopback, where a host HTTP server listens,
//! and the cloud metadata address. The name must not become a way onto the host: the guest's
//! fetch fails and the network log says which answer was refused and which flag allows it;
//! with that flag the same fetch succeeds.

use std::net::Ipv4Addr;
use std::time::Duration;

use krunbox_tests::{e2e, http_server, text};

const CLEANUP: Duration = Duration::from_secs(15);

#[test]
fn an_allowed_name_that_resolves_to_the_hosts_loopback_does_not_reach_it() {
    let Some(k) = e2e("an_allowed_name_that_resolves_to_the_hosts_loopback_does_not_reach_it")
    else {
        return;
    };
    let port = http_server(Ipv4Addr::LOCALHOST, "loopback-secret");
    let records = [(
        "evil.test".to_owned(),
        vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(169, 254, 169, 254)],
    )];
    let dns = krunbox_net::static_dns::serve(records.into_iter().collect(), Duration::ZERO)
        .expect("a DNS server on 127.0.0.1");
    let logs = tempfile::tempdir().expect("tempdir");
    let script =
        format!("timeout 30 wget -q -O- http://evil.test:{port}/; rc=$?; echo; echo rc=$rc");
    let run = |log: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--allow-host",
            "evil.test",
            "--network-log",
            log.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        let out = k
            .krunbox(&args)
            .env("KRUNBOX_DNS_SERVER", dns.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run krunbox");
        assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
        (
            text(&out.stdout),
            std::fs::read_to_string(log).unwrap_or_default(),
        )
    };

    let (stdout, decisions) = run(&logs.path().join("refused.log"), &[]);
    assert!(
        !stdout.contains("secret"),
        "the guest got through: {stdout}"
    );
    assert!(!stdout.contains("rc=0"), "{stdout}");
    for refused in [
        "dns answer 127.0.0.1 for evil.test is internal (the host's loopback); refused; allow \
         it with --allow-net 127.0.0.1/32",
        "dns answer 169.254.169.254 for evil.test is internal (a link-local address",
    ] {
        assert!(decisions.contains(refused), "no {refused:?} in {decisions}");
    }

    let allow = format!("127.0.0.1/32:{port}");
    let (stdout, decisions) = run(&logs.path().join("allowed.log"), &["--allow-net", &allow]);
    assert!(
        stdout.contains("loopback-secret") && stdout.contains("rc=0"),
        "{stdout}\n{decisions}"
    );
    assert!(
        decisions.contains(&format!("-> 127.0.0.1:{port}: allow (--allow-net {allow})")),
        "{decisions}"
    );
    // The metadata address stays refused: the rule names only the loopback address.
    assert!(
        decisions.contains("dns answer 169.254.169.254 for evil.test is internal"),
        "{decisions}"
    );
    k.assert_nothing_left(CLEANUP);
}
