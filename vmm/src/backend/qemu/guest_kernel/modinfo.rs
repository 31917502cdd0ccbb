//! Kernel module metadata: the `depends=` list of a `.ko` and a load order derived from it.
//!
//! Reads the ELF `.modinfo` section directly (NUL-separated `key=value` strings), so neither
//! kmod's `modinfo` nor a matching `modules.dep` is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

/// Why module metadata could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    /// The file is not an ELF object with a `.modinfo` section.
    #[error("{path}: not a kernel module ({detail})")]
    NotAModule {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A module needs one that is not available.
    #[error("module {module} depends on {dependency}, which is not in the kernel package")]
    MissingDependency {
        /// The module.
        module: String,
        /// What it needs.
        dependency: String,
    },
    /// The dependencies form a cycle.
    #[error("module dependencies form a cycle among: {0}")]
    Cycle(String),
}

/// The modules `bytes` (a `.ko` image) depends on.
pub fn depends(path: &Path, bytes: &[u8]) -> Result<Vec<String>, ModinfoError> {
    let not_a_module = |detail: String| ModinfoError::NotAModule {
        path: path.to_owned(),
        detail,
    };
    let file = object::File::parse(bytes).map_err(|e| not_a_module(e.to_string()))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| not_a_module("no .modinfo section".into()))?;
    let data = section.data().map_err(|e| not_a_module(e.to_string()))?;
    Ok(data
        .split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|b| *b == b','))
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect())
}

/// Orders `wanted` and everything they depend on so that each module comes after its
/// dependencies. `depends_of` gives a module's dependencies (`None`: the module is unknown).
/// Ties are broken by name, so the order is stable.
pub fn load_order<F>(wanted: &[&str], mut depends_of: F) -> Result<Vec<String>, ModinfoError>
where
    F: FnMut(&str) -> Option<Vec<String>>,
{
    // Close over dependencies first.
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pending: Vec<(String, Option<String>)> =
        wanted.iter().map(|w| ((*w).to_owned(), None)).collect();
    while let Some((name, needed_by)) = pending.pop() {
        if graph.contains_key(&name) {
            continue;
        }
        let deps = depends_of(&name).ok_or_else(|| ModinfoError::MissingDependency {
            module: needed_by.clone().unwrap_or_else(|| "(requested)".into()),
            dependency: name.clone(),
        })?;
        for dep in &deps {
            pending.push((dep.clone(), Some(name.clone())));
        }
        graph.insert(name, deps);
    }
    // Kahn's algorithm, smallest name first among the ready ones.
    let mut order = Vec::with_capacity(graph.len());
    let mut placed: BTreeSet<String> = BTreeSet::new();
    while order.len() < graph.len() {
        let ready = graph
            .iter()
            .find(|(name, deps)| !placed.contains(*name) && deps.iter().all(|d| placed.contains(d)))
            .map(|(name, _)| name.clone());
        match ready {
            Some(name) => {
                placed.insert(name.clone());
                order.push(name);
            }
            None => {
                let left: Vec<&str> = graph
                    .keys()
                    .filter(|n| !placed.contains(*n))
                    .map(String::as_str)
                    .collect();
                return Err(ModinfoError::Cycle(left.join(", ")));
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(name: &str) -> Option<Vec<String>> {
        let deps: &[&str] = match name {
            "virtio_ring" | "virtio_pci_modern_dev" | "virtio_pci_legacy_dev" | "vsock" => &[],
            "virtio" => &["virtio_ring"],
            "virtio_pci" => &[
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci_legacy_dev",
            ],
            "vmw_vsock_virtio_transport_common" => &["vsock"],
            "vmw_vsock_virtio_transport" => &[
                "vmw_vsock_virtio_transport_common",
                "virtio",
                "virtio_ring",
                "vsock",
            ],
            "loop_a" => &["loop_b"],
            "loop_b" => &["loop_a"],
            "needs_ghost" => &["ghost"],
            _ => return None,
        };
        Some(deps.iter().map(|d| (*d).to_owned()).collect())
    }

    #[test]
    fn dependencies_come_first_and_are_pulled_in() {
        let order = load_order(&["vmw_vsock_virtio_transport", "virtio_pci"], graph).unwrap();
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert_eq!(order.len(), 8, "{order:?}");
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("virtio") < pos("virtio_pci"));
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
        assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
    }

    #[test]
    fn cycles_and_missing_modules_are_errors() {
        assert!(matches!(
            load_order(&["loop_a"], graph),
            Err(ModinfoError::Cycle(_))
        ));
        let err = load_order(&["needs_ghost"], graph).unwrap_err();
        assert!(
            err.to_string().contains("needs_ghost depends on ghost"),
            "{err}"
        );
    }

    #[test]
    fn a_non_elf_file_is_not_a_module() {
        let err = depends(Path::new("x.ko"), b"not elf").unwrap_err();
        assert!(err.to_string().contains("x.ko"), "{err}");
    }
}
