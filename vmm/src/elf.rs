//! Facts about ELF binaries on the host.

use std::path::Path;

/// Whether `path` is an ELF executable without a program interpreter (`.interp`), i.e.
/// statically linked and runnable in a guest that has no libc of its own.
pub fn is_static_executable(path: &Path) -> bool {
    use object::Object;
    std::fs::read(path).is_ok_and(|bytes| {
        object::File::parse(&*bytes).is_ok_and(|elf| elf.section_by_name(".interp").is_none())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_and_non_elf_files_are_not_static() {
        assert!(
            !is_static_executable(Path::new("/bin/sh")),
            "Debian's sh is dynamic"
        );
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(!is_static_executable(&text));
    }
}
