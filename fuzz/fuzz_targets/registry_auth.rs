//! Feeds arbitrary bytes to what a registry's authentication sends back: a `WWW-Authenticate`
//! challenge and a token server's answer. Never a panic; a parsed challenge has a realm, and a
//! token never holds what would break out of its header.
#![no_main]

use krunbox_image::limits::MAX_TOKEN_RESPONSE;
use krunbox_image::registry_token::{checked_realm, token_from_answer, BearerChallenge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data) {
        if let Some(challenge) = BearerChallenge::parse(header) {
            for insecure in [false, true] {
                if let Ok(url) = checked_realm(&challenge.realm, insecure) {
                    assert!(url.scheme() == "https" || (insecure && url.scheme() == "http"));
                }
            }
        }
    }
    if data.len() as u64 <= MAX_TOKEN_RESPONSE {
        if let Ok(token) = token_from_answer(data) {
            assert!(!token.is_empty());
            assert!(!token.bytes().any(|b| b.is_ascii_control() || b == b' '));
        }
    }
});
