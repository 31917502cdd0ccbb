//! Linux capabilities by name, as `docker run --cap-add/--cap-drop` and an OCI config's
//! `process.capabilities` name them, in Linux's numbering (the guest is Linux whatever the
//! host is), and the five sets of a command as [`CapabilitySets`] carries them.
//!
//! ```
//! use krunbox_protocol::capability::{number, CapabilityList};
//! assert_eq!(number("CAP_NET_RAW"), Some(13));
//! assert_eq!(number("net_raw"), Some(13));
//! let list: CapabilityList = "CHOWN,KILL".parse().unwrap();
//! assert_eq!(list.mask(), 1 | 1 << 5);
//! assert!("CHOWN,NO_SUCH".parse::<CapabilityList>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use crate::messages::CapabilitySets;

/// The handshake feature of an agent that applies
/// [`ExecRequest::capabilities`](crate::messages::ExecRequest::capabilities) and
/// [`ExecRequest::no_new_privileges`](crate::messages::ExecRequest::no_new_privileges).
pub const AGENT_FEATURE: &str = "capabilities";

/// Every capability Linux 6.1 knows, by its name without `CAP_`; the index is its number.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability in [`NAMES`], as a mask.
pub const ALL: u64 = (1 << NAMES.len()) - 1;

/// Why a capability or a list of them is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// A name Linux does not know.
    #[error("`{0}` is not a Linux capability (for example NET_RAW, CAP_SYS_ADMIN or ALL)")]
    Unknown(String),
    /// Sets no process can have.
    #[error("{capabilities} in the {set} set must also be {within}")]
    Impossible {
        /// The set that holds them.
        set: &'static str,
        /// The capabilities, comma-separated.
        capabilities: String,
        /// The sets they must be in.
        within: &'static str,
    },
    /// Not `SET=LIST;...` with a known set.
    #[error(
        "`{0}` is not SET=CAP,CAP;... with SET one of bounding, effective, permitted, \
         inheritable, ambient"
    )]
    Syntax(String),
}

/// The number of capability `name` (`NET_RAW`, `net_raw` or `CAP_NET_RAW`).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES
        .iter()
        .position(|known| *known == bare)
        .map(|index| index as u32)
}

/// The name of capability `number`, with `CAP_` (`CAP_NET_RAW` for 13).
pub fn name(number: u32) -> Option<String> {
    NAMES.get(number as usize).map(|bare| format!("CAP_{bare}"))
}

/// The names of the capabilities in `mask`, lowest first.
pub fn names(mask: u64) -> Vec<String> {
    (0..NAMES.len() as u32)
        .filter(|bit| mask & (1 << bit) != 0)
        .filter_map(name)
        .collect()
}

/// The mask of the named capabilities; `ALL` (any case) stands for all of them.
pub fn mask_of<S: AsRef<str>>(names: &[S]) -> Result<u64, CapabilityError> {
    names.iter().try_fold(0, |mask, name| {
        let name = name.as_ref();
        if name.trim().eq_ignore_ascii_case("all") {
            return Ok(ALL);
        }
        number(name)
            .map(|bit| mask | 1 << bit)
            .ok_or_else(|| CapabilityError::Unknown(name.to_owned()))
    })
}

/// A comma-separated list of capabilities (`CHOWN,CAP_KILL`; `ALL`; empty for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapabilityList(u64);

impl CapabilityList {
    /// The list as a mask (bit N is capability N).
    pub fn mask(self) -> u64 {
        self.0
    }
}

impl FromStr for CapabilityList {
    type Err = CapabilityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let names: Vec<&str> = text.split(',').filter(|n| !n.trim().is_empty()).collect();
        mask_of(&names).map(Self)
    }
}

impl CapabilitySets {
    /// Docker's `--cap-add`/`--cap-drop`: every capability (a guest's root has them all)
    /// less `drop`, plus `add`, except that `--cap-drop ALL` starts from none (so
    /// `--cap-drop ALL --cap-add CHOWN` leaves CHOWN alone) and `--cap-add ALL` keeps its drops
    /// (`--cap-add ALL --cap-drop NET_RAW` has all but NET_RAW); as the bounding, effective and
    /// permitted sets; nothing inheritable or ambient. A command
    /// run as root then has exactly these; one run as another user has none (its capabilities
    /// go at `execve`, as with Docker) unless a file capability grants one within the bounding
    /// set.
    pub fn docker(add: u64, drop: u64) -> Self {
        let (add, drop) = (add & ALL, drop & ALL);
        let granted = if drop == ALL {
            add
        } else if add == ALL {
            ALL & !drop
        } else {
            (ALL & !drop) | add
        };
        Self {
            bounding: granted,
            effective: granted,
            permitted: granted,
            inheritable: 0,
            ambient: 0,
        }
    }

    /// Whether Linux can give a process these sets: the effective set within the permitted
    /// one, the ambient set within both the permitted and the inheritable ones.
    pub fn check(&self) -> Result<(), CapabilityError> {
        let outside = |set: u64, within: u64| names(set & !within);
        for (set, stray, within) in [
            (
                "effective",
                outside(self.effective, self.permitted),
                "permitted",
            ),
            (
                "ambient",
                outside(self.ambient, self.permitted & self.inheritable),
                "permitted and inheritable",
            ),
        ] {
            if !stray.is_empty() {
                return Err(CapabilityError::Impossible {
                    set,
                    capabilities: stray.join(","),
                    within,
                });
            }
        }
        Ok(())
    }

    fn sets(&self) -> [(&'static str, u64); 5] {
        [
            ("bounding", self.bounding),
            ("effective", self.effective),
            ("permitted", self.permitted),
            ("inheritable", self.inheritable),
            ("ambient", self.ambient),
        ]
    }

    fn set_mut(&mut self, set: &str) -> Option<&mut u64> {
        match set {
            "bounding" => Some(&mut self.bounding),
            "effective" => Some(&mut self.effective),
            "permitted" => Some(&mut self.permitted),
            "inheritable" => Some(&mut self.inheritable),
            "ambient" => Some(&mut self.ambient),
            _ => None,
        }
    }
}

/// `bounding=CAP_CHOWN,CAP_KILL;effective=...;...`: the form `krunbox run --capabilities`
/// takes. A set left out is empty.
impl fmt::Display for CapabilitySets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self
            .sets()
            .iter()
            .map(|(set, mask)| format!("{set}={}", names(*mask).join(",")))
            .collect();
        f.write_str(&text.join(";"))
    }
}

impl FromStr for CapabilitySets {
    type Err = CapabilityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut sets = Self::default();
        for part in text.split(';').filter(|p| !p.trim().is_empty()) {
            let syntax = || CapabilityError::Syntax(part.to_owned());
            let (set, list) = part.split_once('=').ok_or_else(syntax)?;
            let mask = list.parse::<CapabilityList>()?.mask();
            *sets.set_mut(set.trim()).ok_or_else(syntax)? = mask;
        }
        sets.check()?;
        Ok(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for (index, bare) in NAMES.iter().enumerate() {
            assert_eq!(number(bare), Some(index as u32));
            assert_eq!(name(index as u32), Some(format!("CAP_{bare}")));
        }
        assert_eq!(number("cap_checkpoint_restore"), Some(40));
        assert_eq!(number("NO_SUCH"), None);
        assert_eq!(name(41), None);
        assert_eq!(mask_of(&["all"]).unwrap(), ALL);
        assert_eq!(mask_of::<&str>(&[]).unwrap(), 0);
        assert!(matches!(
            mask_of(&["CAP_X"]),
            Err(CapabilityError::Unknown(_))
        ));
    }

    #[test]
    fn docker_rules_drop_then_add() {
        let none = CapabilitySets::docker(0, ALL);
        assert_eq!((none.bounding, none.effective, none.ambient), (0, 0, 0));
        let chown = CapabilitySets::docker(1, ALL);
        assert_eq!((chown.bounding, chown.permitted), (1, 1));
        let no_raw = CapabilitySets::docker(0, 1 << 13);
        assert_eq!(no_raw.bounding, ALL & !(1 << 13));
        assert_eq!(no_raw.inheritable, 0);
        let all_but_raw = CapabilitySets::docker(ALL, 1 << 13);
        assert_eq!(all_but_raw.bounding, ALL & !(1 << 13));
        assert!(no_raw.check().is_ok() && chown.check().is_ok());
    }

    #[test]
    fn the_text_form_round_trips_and_refuses_unknown_sets() {
        let sets = CapabilitySets {
            bounding: 0b101,
            effective: 1,
            permitted: 0b101 | 1 << 40,
            inheritable: 1 << 40,
            ambient: 1 << 40,
        };
        assert_eq!(sets.to_string().parse::<CapabilitySets>().unwrap(), sets);
        let partial: CapabilitySets = "bounding=CHOWN; effective=cap_chown;permitted=CHOWN"
            .parse()
            .unwrap();
        assert_eq!(
            (partial.bounding, partial.effective, partial.permitted),
            (1, 1, 1)
        );
        for bad in [
            "bounding",
            "bound=CHOWN",
            "bounding=CHOWN,NOPE",
            "effective=KILL",
            "permitted=KILL;ambient=KILL",
        ] {
            assert!(bad.parse::<CapabilitySets>().is_err(), "{bad}");
        }
    }
}
