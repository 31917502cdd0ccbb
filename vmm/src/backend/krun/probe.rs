//! Can libkrun boot a guest here? It needs a hypervisor that runs standard guests (KVM that is
//! not `kvm_pvm` on Linux, Hypervisor.framework on macOS) and, unless `--kernel` gives one,
//! libkrunfw (the guest kernel as a shared library that libkrun `dlopen`s at start).

use crate::backend::Availability;

/// libkrunfw's file name, as libkrun 1.19 `dlopen`s it.
#[cfg(target_os = "macos")]
pub const KRUNFW_NAME: &str = "libkrunfw.5.dylib";
/// libkrunfw's file name, as libkrun 1.19 `dlopen`s it.
#[cfg(not(target_os = "macos"))]
pub const KRUNFW_NAME: &str = "libkrunfw.so.5";

/// Where package managers put libkrunfw beyond the dynamic linker's default search path:
/// Homebrew on Apple silicon. The VMM child gets them on its `DYLD_FALLBACK_LIBRARY_PATH`
/// ([`library_path_for_vmm`]), because libkrun `dlopen`s libkrunfw by bare name.
#[cfg(target_os = "macos")]
pub const EXTRA_LIBRARY_DIRS: &[&str] = &["/opt/homebrew/lib"];
/// Where package managers put libkrunfw beyond the dynamic linker's default search path.
#[cfg(not(target_os = "macos"))]
pub const EXTRA_LIBRARY_DIRS: &[&str] = &[];

/// The dyld fallback path for the VMM child: what is set (or dyld's default) plus
/// [`EXTRA_LIBRARY_DIRS`].
#[cfg(target_os = "macos")]
pub fn library_path_for_vmm() -> std::ffi::OsString {
    let mut path = std::env::var_os("DYLD_FALLBACK_LIBRARY_PATH").unwrap_or_else(|| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/lib:/usr/local/lib:/usr/lib").into()
    });
    for dir in EXTRA_LIBRARY_DIRS {
        path.push(":");
        path.push(dir);
    }
    path
}

/// How to get libkrunfw.
const KRUNFW_HINT: &str = "install libkrunfw 5 (Debian/Ubuntu: package libkrunfw5 from Debian's \
                           unstable suite, pinned, as scripts/setup.sh does; macOS: `brew install \
                           libkrunfw`), or boot your own kernel with --kernel";

/// What the probes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Whether this krunbox has libkrun at all (Linux, macOS on Apple silicon).
    pub built: bool,
    /// The hypervisor: what it is, or why it cannot run standard guests.
    pub hypervisor: Result<String, String>,
    /// libkrunfw: that it loads, or why not.
    pub krunfw: Result<String, String>,
}

impl Probe {
    /// Probes this host.
    pub fn host() -> Self {
        Self {
            built: cfg!(krunbox_libkrun),
            hypervisor: probe_hypervisor(),
            krunfw: probe_krunfw(),
        }
    }

    /// Whether a guest can boot, with libkrunfw's kernel or (`custom_kernel`) one's own.
    pub fn availability(&self, custom_kernel: bool) -> Availability {
        if !self.built {
            return Availability::Unavailable(
                "libkrun is not built into krunbox for this platform (it supports Linux and \
                 macOS on Apple silicon)"
                    .into(),
            );
        }
        let hypervisor = match &self.hypervisor {
            Ok(what) => what,
            Err(why) => return Availability::Unavailable(why.clone()),
        };
        match (&self.krunfw, custom_kernel) {
            (Ok(krunfw), _) => Availability::Available(format!("{hypervisor}, {krunfw}")),
            (Err(_), true) => Availability::Available(format!("{hypervisor}, your --kernel")),
            (Err(why), false) => Availability::Unavailable(why.clone()),
        }
    }
}

/// The hypervisor libkrun would use.
#[cfg(target_os = "linux")]
pub fn probe_hypervisor() -> Result<String, String> {
    use crate::backend::host::{probe_kvm, KvmStatus};
    match probe_kvm() {
        KvmStatus::Usable => Ok("KVM".into()),
        KvmStatus::Missing(why) => Err(format!("no KVM: {why}")),
        KvmStatus::Unusable(why) => Err(why),
    }
}

/// The hypervisor libkrun would use.
#[cfg(target_os = "macos")]
pub fn probe_hypervisor() -> Result<String, String> {
    crate::backend::host::probe_hvf().map(|()| "Hypervisor.framework".into())
}

/// The hypervisor libkrun would use.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn probe_hypervisor() -> Result<String, String> {
    Err("libkrun needs Linux KVM or macOS Hypervisor.framework".into())
}

/// Whether libkrunfw loads, as libkrun will load it (by name, through the dynamic linker's
/// search path), and has the symbol libkrun calls.
#[cfg(krunbox_libkrun)]
pub fn probe_krunfw() -> Result<String, String> {
    let load = |name: &std::ffi::OsStr| {
        // SAFETY: loading libkrunfw runs no initialisers of consequence (it is a kernel image
        // and two accessor functions); the library is only inspected for a symbol, then
        // unloaded.
        unsafe { libloading::Library::new(name) }
    };
    let (library, found) = match load(KRUNFW_NAME.as_ref()) {
        Ok(library) => (library, KRUNFW_NAME.to_owned()),
        Err(e) => EXTRA_LIBRARY_DIRS
            .iter()
            .map(|dir| std::path::Path::new(dir).join(KRUNFW_NAME))
            .find_map(|path| load(path.as_os_str()).ok().map(|l| (l, path)))
            .map(|(library, path)| (library, path.display().to_string()))
            .ok_or_else(|| format!("cannot load {KRUNFW_NAME} ({e}); {KRUNFW_HINT}"))?,
    };
    // SAFETY: only the symbol's presence is checked; it is never called.
    let symbol = unsafe { library.get::<unsafe extern "C" fn()>(b"krunfw_get_kernel\0") };
    match symbol {
        Ok(_) => Ok(format!("{found} (libkrun's kernel)")),
        Err(e) => Err(format!(
            "{KRUNFW_NAME} loads but has no krunfw_get_kernel ({e}); {KRUNFW_HINT}"
        )),
    }
}

/// Whether libkrunfw loads (never, without libkrun).
#[cfg(not(krunbox_libkrun))]
pub fn probe_krunfw() -> Result<String, String> {
    Err(format!(
        "{KRUNFW_NAME}: not looked for (libkrun is not built in)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(hypervisor: Result<&str, &str>, krunfw: Result<&str, &str>) -> Probe {
        Probe {
            built: true,
            hypervisor: hypervisor.map(Into::into).map_err(Into::into),
            krunfw: krunfw.map(Into::into).map_err(Into::into),
        }
    }

    #[test]
    fn the_hypervisor_comes_first_then_the_kernel() {
        let pvm = "KVM present but cannot run standard guests: it is kvm_pvm";
        assert_eq!(
            probe(Err(pvm), Ok("libkrunfw.so.5")).availability(false),
            Availability::Unavailable(pvm.into())
        );
        assert_eq!(
            probe(Err(pvm), Ok("libkrunfw.so.5")).availability(true),
            Availability::Unavailable(pvm.into())
        );
        assert_eq!(
            probe(Ok("KVM"), Ok("libkrunfw.so.5")).availability(false),
            Availability::Available("KVM, libkrunfw.so.5".into())
        );
        assert_eq!(
            probe(Ok("KVM"), Err("cannot load libkrunfw.so.5")).availability(false),
            Availability::Unavailable("cannot load libkrunfw.so.5".into())
        );
        assert!(probe(Ok("KVM"), Err("no libkrunfw"))
            .availability(true)
            .is_available());
        let mut not_built = probe(Ok("KVM"), Ok("x"));
        not_built.built = false;
        assert!(
            matches!(not_built.availability(false), Availability::Unavailable(why) if why.contains("not built"))
        );
    }

    #[cfg(krunbox_libkrun)]
    #[test]
    fn the_libkrunfw_probe_names_the_library() {
        // Installed or not, the answer names the library (and how to get it when missing).
        match probe_krunfw() {
            Ok(found) => assert!(found.contains(KRUNFW_NAME), "{found}"),
            Err(why) => assert!(
                why.contains(KRUNFW_NAME) && why.contains("libkrunfw5"),
                "{why}"
            ),
        }
    }
}
