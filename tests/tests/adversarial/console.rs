//! A guest against the host's disk: its console cannot grow without bound.

use std::time::Duration;

use krunbox_tests::{e2e, text};

/// The cap the test sets (`KRUNBOX_CONSOLE_LOG_CAP`), small so TCG's slow serial port
/// reaches it in seconds (the default is 8 MiB).
const CAP: u64 = 16 * 1024;

#[test]
fn a_guest_flooding_its_console_fills_at_most_twice_the_cap_on_the_host() {
    let Some(k) = e2e("a_guest_flooding_its_console_fills_at_most_twice_the_cap_on_the_host")
    else {
        return;
    };
    let data = k.private_data_dir();
    let krunbox = |args: &[&str]| {
        let out = k
            .krunbox(args)
            .env("KRUNBOX_DATA_DIR", data.path())
            .env("KRUNBOX_CONSOLE_LOG_CAP", CAP.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    krunbox(&["create", "--name", "flood", "--memory", "256"]);
    krunbox(&["start", "flood"]);
    // Three times the cap in 4 KiB writes, then a marker: the newest lines must survive.
    // (Few large writes: under the nested KVM host of the libkrun half, a console flood of
    // many small writes made the emulated host itself unstable.)
    krunbox(&[
        "exec",
        "flood",
        "-u",
        "0",
        "--",
        "sh",
        "-c",
        "line=flood-line-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; block=; \
         i=0; while [ $i -lt 64 ]; do block=\"$block$line\n\"; i=$((i+1)); done; \
         i=0; while [ $i -lt 12 ]; do printf \"$block\"; i=$((i+1)); done > /dev/console; \
         echo END-OF-FLOOD > /dev/console",
    ]);
    let mut logs = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        logs.clear();
        let mut todo = vec![k.runtime_dir().to_owned()];
        while let Some(dir) = todo.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    todo.push(entry.path());
                } else if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("console.log")
                {
                    logs.push((entry.path(), meta.len()));
                }
            }
        }
        let newest = logs
            .iter()
            .find(|(p, _)| p.file_name().is_some_and(|n| n == "console.log"));
        if newest.is_some_and(|(p, _)| {
            std::fs::read_to_string(p).is_ok_and(|t| t.contains("END-OF-FLOOD"))
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the marker never reached console.log: {logs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(logs.len(), 2, "console.log and console.log.old: {logs:?}");
    for (path, len) in &logs {
        assert!(*len <= CAP, "{} has {len} bytes", path.display());
    }
    krunbox(&["rm", "-f", "flood"]);
    k.assert_nothing_left(Duration::from_secs(15));
}
