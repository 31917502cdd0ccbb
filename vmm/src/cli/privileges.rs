//! What a command may do in its guest beyond its user: its capabilities and `no_new_privs`,
//! on the command line as Docker takes them (`run`, `exec`, and `krunbox-oci`'s bundles).
//!
//! Without these options a command has what Linux gives it: all capabilities as the guest's
//! root, none as another user. The VM is the boundary either way; these narrow what a
//! command can do inside it (to the guest's other processes, its network, the shares).

use krunbox_protocol::capability::{CapabilityError, CapabilityList};
use krunbox_protocol::client::ExecSpec;
use krunbox_protocol::messages::CapabilitySets;

/// The options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PrivilegeArgs {
    /// Give COMMAND a capability it would not have (after --cap-drop; CAP_ prefix optional,
    /// case ignored; comma-separated or repeated). Example: --cap-drop ALL --cap-add CHOWN.
    #[arg(long = "cap-add", value_name = "CAP", value_parser = parse_list)]
    pub cap_add: Vec<CapabilityList>,
    /// Take a capability from COMMAND (ALL for every one): it leaves the bounding set, so
    /// nothing COMMAND runs (setuid programs included) can get it back.
    #[arg(long = "cap-drop", value_name = "CAP", value_parser = parse_list)]
    pub cap_drop: Vec<CapabilityList>,
    /// Set each capability set exactly, as an OCI config does (a set left out is empty):
    /// "bounding=CAP,..;effective=..;permitted=..;inheritable=..;ambient=..".
    #[arg(
        long,
        value_name = "SETS",
        value_parser = parse_sets,
        conflicts_with_all = ["cap_add", "cap_drop"]
    )]
    pub capabilities: Option<CapabilitySets>,
    /// Docker's security options; krunbox takes no-new-privileges[=true|false]: no execve of
    /// a setuid, setgid or file-capability program gives COMMAND more than it has.
    #[arg(long = "security-opt", value_name = "OPTION", value_parser = parse_security_opt)]
    pub security_opt: Vec<SecurityOpt>,
}

/// A `--security-opt` krunbox applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityOpt {
    /// `no-new-privileges`, `no-new-privileges=true|false` (or `:`, as Docker also takes).
    NoNewPrivileges(bool),
}

fn parse_list(text: &str) -> Result<CapabilityList, String> {
    text.parse().map_err(|e: CapabilityError| e.to_string())
}

fn parse_sets(text: &str) -> Result<CapabilitySets, String> {
    text.parse().map_err(|e: CapabilityError| e.to_string())
}

fn parse_security_opt(text: &str) -> Result<SecurityOpt, String> {
    let (name, value) = match text.split_once(['=', ':']) {
        Some((name, value)) => (name, Some(value)),
        None => (text, None),
    };
    if name != "no-new-privileges" {
        return Err(format!(
            "`{text}`: krunbox takes only no-new-privileges[=true|false] (seccomp, AppArmor and \
             SELinux labels confine a shared kernel; the VM is krunbox's boundary)"
        ));
    }
    match value {
        None | Some("true") => Ok(SecurityOpt::NoNewPrivileges(true)),
        Some("false") => Ok(SecurityOpt::NoNewPrivileges(false)),
        Some(other) => Err(format!("no-new-privileges={other}: true or false")),
    }
}

/// What a command runs with, resolved from the options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Privileges {
    /// The capability sets; `None`: as Linux makes them.
    pub capabilities: Option<CapabilitySets>,
    /// Set `no_new_privs`.
    pub no_new_privileges: bool,
}

impl PrivilegeArgs {
    /// The privileges these options ask for.
    pub fn privileges(&self) -> Privileges {
        let union = |lists: &[CapabilityList]| lists.iter().fold(0, |m, l| m | l.mask());
        let docker = (!self.cap_add.is_empty() || !self.cap_drop.is_empty())
            .then(|| CapabilitySets::docker(union(&self.cap_add), union(&self.cap_drop)));
        Privileges {
            capabilities: self.capabilities.or(docker),
            no_new_privileges: self
                .security_opt
                .iter()
                .rev()
                .map(|SecurityOpt::NoNewPrivileges(on)| *on)
                .next()
                .unwrap_or(false),
        }
    }
}

impl Privileges {
    /// `spec` with these privileges.
    pub fn apply(&self, mut spec: ExecSpec) -> ExecSpec {
        if let Some(sets) = self.capabilities {
            spec = spec.capabilities(sets);
        }
        spec.no_new_privileges(self.no_new_privileges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use krunbox_protocol::capability::ALL;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        privileges: PrivilegeArgs,
    }

    fn privileges(args: &[&str]) -> Result<Privileges, clap::Error> {
        Cli::try_parse_from(std::iter::once("krunbox").chain(args.iter().copied()))
            .map(|cli| cli.privileges.privileges())
    }

    #[test]
    fn docker_s_options_resolve_to_sets() {
        assert_eq!(privileges(&[]).unwrap(), Privileges::default());
        let chown = privileges(&["--cap-drop", "ALL", "--cap-add", "cap_chown"]).unwrap();
        assert_eq!(chown.capabilities.map(|c| c.bounding), Some(1));
        let two = privileges(&["--cap-drop=NET_RAW,SYS_ADMIN"]).unwrap();
        assert_eq!(
            two.capabilities.map(|c| c.effective),
            Some(ALL & !(1 << 13 | 1 << 21))
        );
        let exact = privileges(&[
            "--capabilities",
            "bounding=KILL;permitted=KILL;inheritable=KILL;ambient=KILL",
        ])
        .unwrap();
        assert_eq!(
            exact
                .capabilities
                .map(|c| (c.bounding, c.effective, c.ambient)),
            Some((32, 0, 32))
        );
        let nnp = privileges(&["--security-opt", "no-new-privileges"]).unwrap();
        assert!(nnp.no_new_privileges);
        let off = privileges(&[
            "--security-opt=no-new-privileges:true",
            "--security-opt=no-new-privileges=false",
        ]);
        assert!(!off.unwrap().no_new_privileges);
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            &["--cap-add", "NET_RAWR"][..],
            &["--capabilities", "bounding=CHOWN", "--cap-drop", "ALL"],
            &["--capabilities", "boundary=CHOWN"],
            &["--capabilities", "ambient=KILL"],
            &["--security-opt", "seccomp=unconfined"],
            &["--security-opt", "no-new-privileges=maybe"],
        ] {
            assert!(privileges(bad).is_err(), "{bad:?}");
        }
    }
}
