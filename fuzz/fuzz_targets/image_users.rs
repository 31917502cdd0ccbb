//! Feeds arbitrary bytes as an image's `/etc/passwd` and `/etc/group` (a hostile image writes
//! them) and a user spec to the resolver `-u` and the image's `User` go through: never a
//! panic, and a resolved user is one the files (or the spec's numbers) name.
#![no_main]

use krunbox_image::user::resolve_in_texts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // passwd, group and the spec, split at the first two NULs.
    let mut parts = text.splitn(3, '\0');
    let passwd = parts.next().unwrap_or_default();
    let group = parts.next();
    let spec = parts.next().unwrap_or("root");
    for passwd in [Some(passwd), None] {
        match resolve_in_texts(passwd, group, spec) {
            Ok(user) => {
                let named = spec.split(':').next().unwrap_or_default();
                let numeric = named.parse::<u32>().ok();
                assert!(
                    numeric.is_none_or(|uid| uid == user.uid),
                    "a numeric spec resolved to another uid"
                );
                assert!(!user.home.is_empty());
            }
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
});
