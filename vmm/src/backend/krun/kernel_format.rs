//! Which `krun_set_kernel` format a `--kernel` file is, from its first bytes.
//!
//! libkrun 1.19 loads, per guest architecture:
//!
//! | file | x86_64 | aarch64 |
//! |---|---|---|
//! | ELF `vmlinux` | 1 (`Elf`) | — |
//! | a compressed `vmlinux` (gzip, bzip2, zstd) | 4, 3, 5 (`Image*`) | — |
//! | a bzImage whose payload is gzip, bzip2 or zstd | 4, 3, 5 (libkrun finds the payload by its magic) | — |
//! | arm64 `Image` | — | 0 (`Raw`) |
//! | EFI zboot `vmlinuz` (PE with a gzip payload) | — | 2 (`PeGz`) |
//!
//! Everything else (an xz or lzma bzImage — Debian's — an lz4 payload, another architecture's
//! kernel) is refused here with what to give instead, rather than failing inside the VMM.

use serde::{Deserialize, Serialize};

/// The formats of `krun_set_kernel` (its `kernel_format` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelFormat {
    /// 0: a raw image (arm64 `Image`).
    Raw,
    /// 1: an ELF `vmlinux`.
    Elf,
    /// 2: a PE file with a gzip payload (EFI zboot).
    PeGz,
    /// 3: bzip2-compressed vmlinux.
    ImageBz2,
    /// 4: gzip-compressed vmlinux.
    ImageGz,
    /// 5: zstd-compressed vmlinux.
    ImageZstd,
}

impl KernelFormat {
    /// The number `krun_set_kernel` takes.
    pub fn code(self) -> u32 {
        match self {
            Self::Raw => 0,
            Self::Elf => 1,
            Self::PeGz => 2,
            Self::ImageBz2 => 3,
            Self::ImageGz => 4,
            Self::ImageZstd => 5,
        }
    }
}

/// The guest architecture (libkrun's guests have the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64.
    X86_64,
    /// aarch64.
    Aarch64,
}

impl Arch {
    /// The host's.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            Self::Aarch64
        } else {
            Self::X86_64
        }
    }
}

/// Why a kernel file cannot be booted by libkrun.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnsupportedKernel(pub String);

/// How many leading bytes [`detect`] needs (a bzImage's setup header ends before 0x270).
pub const HEADER_LEN: usize = 64 * 1024;

const GZIP: &[u8] = &[0x1f, 0x8b, 0x08];
const BZIP2: &[u8] = b"BZh";
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const LZMA: &[u8] = &[0x5d, 0x00, 0x00];
const LZ4: &[u8] = &[0x02, 0x21, 0x4c, 0x18];

fn at(bytes: &[u8], offset: usize, magic: &[u8]) -> bool {
    bytes.get(offset..offset + magic.len()) == Some(magic)
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(offset..offset + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

fn find(bytes: &[u8], magic: &[u8]) -> Option<usize> {
    bytes.windows(magic.len()).position(|w| w == magic)
}

/// The format of a kernel whose file starts with `head` (at least [`HEADER_LEN`] bytes, or the
/// whole file), for a guest of `arch`.
pub fn detect(head: &[u8], arch: Arch) -> Result<KernelFormat, UnsupportedKernel> {
    let unsupported = |what: &str| Err(UnsupportedKernel(what.to_owned()));
    let is_arm64_image = at(head, 0x38, b"ARM\x64");
    // x86 boot protocol header ("HdrS"): a bzImage (with or without an EFI stub).
    let is_bzimage = at(head, 0x202, b"HdrS");
    match arch {
        Arch::X86_64 => {
            if at(head, 0, b"\x7fELF") {
                // e_machine at 18: 62 is x86-64.
                return match head.get(18..20) {
                    Some([62, 0]) => Ok(KernelFormat::Elf),
                    _ => unsupported("an ELF kernel for another architecture than x86_64"),
                };
            }
            if is_bzimage {
                return bzimage_payload(head);
            }
            if is_arm64_image {
                return unsupported("an arm64 kernel Image cannot boot on x86_64");
            }
            if at(head, 0, GZIP) {
                return Ok(KernelFormat::ImageGz);
            }
            if at(head, 0, BZIP2) {
                return Ok(KernelFormat::ImageBz2);
            }
            if at(head, 0, ZSTD) {
                return Ok(KernelFormat::ImageZstd);
            }
            unsupported(
                "not a kernel libkrun can load on x86_64: give an ELF vmlinux, a gzip/bzip2/zstd \
                 compressed vmlinux, or a bzImage with a gzip/bzip2/zstd payload",
            )
        }
        Arch::Aarch64 => {
            if is_arm64_image {
                return Ok(KernelFormat::Raw);
            }
            // EFI zboot: "MZ", then "zimg" and the compression name at 0x18.
            if at(head, 0, b"MZ") && at(head, 4, b"zimg") {
                return if at(head, 0x18, b"gzip") {
                    Ok(KernelFormat::PeGz)
                } else {
                    unsupported(
                        "an EFI zboot kernel with a payload other than gzip; libkrun takes gzip \
                         zboot or the uncompressed arm64 Image",
                    )
                };
            }
            if is_bzimage || at(head, 0, b"\x7fELF") {
                return unsupported(
                    "libkrun on aarch64 boots an arm64 Image (or a gzip EFI zboot vmlinuz), not \
                     an ELF or x86 kernel",
                );
            }
            if at(head, 0, GZIP) || at(head, 0, BZIP2) || at(head, 0, ZSTD) {
                return unsupported(
                    "a compressed kernel: libkrun on aarch64 needs the uncompressed arm64 Image \
                     (decompress it first)",
                );
            }
            unsupported("not an arm64 kernel Image")
        }
    }
}

/// A bzImage: libkrun (x86_64) has no bzImage loader, but its `Image*` formats search the file
/// for the first gzip/bzip2/zstd magic and load the ELF inside — the bzImage's payload, provided
/// it is the first such magic in the file.
fn bzimage_payload(head: &[u8]) -> Result<KernelFormat, UnsupportedKernel> {
    let setup_sects = match head.get(0x1f1) {
        Some(0) | None => 4,
        Some(n) => usize::from(*n),
    };
    let payload_offset = u32_at(head, 0x248)
        .and_then(|o| usize::try_from(o).ok())
        .filter(|o| *o > 0)
        .ok_or_else(|| {
            UnsupportedKernel(
                "a bzImage older than boot protocol 2.08 (no payload offset); give an ELF vmlinux"
                    .into(),
            )
        })?;
    let payload = (setup_sects + 1) * 512 + payload_offset;
    let candidates = [
        (GZIP, Some(KernelFormat::ImageGz), "gzip"),
        (BZIP2, Some(KernelFormat::ImageBz2), "bzip2"),
        (ZSTD, Some(KernelFormat::ImageZstd), "zstd"),
        (XZ, None, "xz"),
        (LZMA, None, "lzma"),
        (LZ4, None, "lz4"),
    ];
    let Some((magic, format, name)) = candidates.iter().find(|(m, _, _)| at(head, payload, m))
    else {
        return Err(UnsupportedKernel(format!(
            "a bzImage whose payload at {payload:#x} is in no known compression (or beyond the \
             first {HEADER_LEN} bytes); give an ELF vmlinux"
        )));
    };
    let Some(format) = format else {
        return Err(UnsupportedKernel(format!(
            "a bzImage with an {name} payload: libkrun decompresses gzip, bzip2 and zstd only; \
             give the ELF vmlinux (e.g. `scripts/extract-vmlinux` from the kernel sources)"
        )));
    };
    if find(head, magic) != Some(payload) {
        return Err(UnsupportedKernel(format!(
            "a bzImage whose {name} payload at {payload:#x} is not the first {name} signature in \
             the file, so libkrun would decompress the wrong bytes; give an ELF vmlinux"
        )));
    }
    Ok(*format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_x86() -> Vec<u8> {
        let mut head = b"\x7fELF\x02\x01\x01".to_vec();
        head.resize(64, 0);
        head[18] = 62;
        head
    }

    /// A bzImage: 1 setup sector (+ the boot sector), the payload 0x100 into the protected-mode
    /// code.
    fn bzimage(payload_magic: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; 4096];
        head[0..2].copy_from_slice(b"MZ");
        head[0x1f1] = 1;
        head[0x202..0x206].copy_from_slice(b"HdrS");
        head[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes());
        let payload = 2 * 512 + 0x100;
        head[payload..payload + payload_magic.len()].copy_from_slice(payload_magic);
        head
    }

    fn arm64_image() -> Vec<u8> {
        let mut head = vec![0u8; 128];
        head[0..2].copy_from_slice(b"MZ");
        head[0x38..0x3c].copy_from_slice(b"ARM\x64");
        head
    }

    #[test]
    fn x86_kernels() {
        assert_eq!(detect(&elf_x86(), Arch::X86_64), Ok(KernelFormat::Elf));
        assert_eq!(
            detect(&[0x1f, 0x8b, 0x08, 0, 0], Arch::X86_64),
            Ok(KernelFormat::ImageGz)
        );
        assert_eq!(
            detect(b"BZh91AY&SY", Arch::X86_64),
            Ok(KernelFormat::ImageBz2)
        );
        assert_eq!(
            detect(&[0x28, 0xb5, 0x2f, 0xfd, 0], Arch::X86_64),
            Ok(KernelFormat::ImageZstd)
        );
        assert_eq!(
            detect(&bzimage(GZIP), Arch::X86_64),
            Ok(KernelFormat::ImageGz)
        );
        assert_eq!(
            detect(&bzimage(ZSTD), Arch::X86_64),
            Ok(KernelFormat::ImageZstd)
        );
        assert_eq!(KernelFormat::ImageZstd.code(), 5);
        assert_eq!(KernelFormat::Elf.code(), 1);
    }

    #[test]
    fn x86_kernels_libkrun_cannot_load_say_what_to_give() {
        let xz = detect(&bzimage(XZ), Arch::X86_64).unwrap_err().0;
        assert!(xz.contains("xz payload") && xz.contains("vmlinux"), "{xz}");
        let mut early_gzip = bzimage(GZIP);
        early_gzip[0x300..0x303].copy_from_slice(GZIP);
        let err = detect(&early_gzip, Arch::X86_64).unwrap_err().0;
        assert!(err.contains("not the first gzip signature"), "{err}");
        let err = detect(&arm64_image(), Arch::X86_64).unwrap_err().0;
        assert!(err.contains("arm64"), "{err}");
        let mut arm_elf = elf_x86();
        arm_elf[18] = 183;
        assert!(detect(&arm_elf, Arch::X86_64).is_err());
        assert!(detect(b"#!/bin/sh\n", Arch::X86_64).is_err());
        assert!(detect(&[], Arch::X86_64).is_err());
    }

    #[test]
    fn arm64_kernels() {
        assert_eq!(detect(&arm64_image(), Arch::Aarch64), Ok(KernelFormat::Raw));
        let mut zboot = vec![0u8; 64];
        zboot[0..2].copy_from_slice(b"MZ");
        zboot[4..8].copy_from_slice(b"zimg");
        zboot[0x18..0x1c].copy_from_slice(b"gzip");
        assert_eq!(detect(&zboot, Arch::Aarch64), Ok(KernelFormat::PeGz));
        zboot[0x18..0x1c].copy_from_slice(b"zstd");
        assert!(detect(&zboot, Arch::Aarch64).is_err());
        assert!(detect(&elf_x86(), Arch::Aarch64).is_err());
        assert!(detect(&bzimage(GZIP), Arch::Aarch64).is_err());
        let err = detect(&[0x1f, 0x8b, 0x08], Arch::Aarch64).unwrap_err().0;
        assert!(err.contains("decompress"), "{err}");
    }
}
