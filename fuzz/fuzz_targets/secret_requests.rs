//! Feeds arbitrary bytes to what the gateway's interception of secrets reads from a guest
//! before anything is decided: the first bytes of a connection (rustls's ClientHello parser,
//! looking for the server name) and a request's `Host` and `Authorization` values (the
//! authority check and the placeholder's replacement, `Basic` credentials decoded). It must
//! never panic; a rewritten `Authorization` keeps no placeholder.
#![no_main]

use krunbox_net::secrets::http::rewrite_for_fuzzing;
use krunbox_net::secrets::intercept::{peek_server_name, Peeked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Peeked::Hello(Some(name)) = peek_server_name(data) {
        assert!(!name.is_empty());
    }
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (host, authorization) = data.split_at(split);
    let (_, rewritten) = rewrite_for_fuzzing(host, authorization);
    if let Some(rewritten) = rewritten {
        let placeholder = b"krunbox-secret-KEY-placeholder";
        let had = authorization
            .windows(placeholder.len())
            .any(|w| w == placeholder);
        let has = rewritten
            .windows(placeholder.len())
            .any(|w| w == placeholder);
        assert!(!(had && has), "a placeholder survived its replacement");
    }
});
