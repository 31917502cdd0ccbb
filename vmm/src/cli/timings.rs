//! `krunbox run --timings`: where the time of one run went, step by step, printed on stderr
//! once the run is over (as text, or one JSON object for scripts and `cargo xtask bench`).
//!
//! The host measures its own steps; the guest's split comes from the agent's handshake, which
//! says what the guest's boot clock (`CLOCK_BOOTTIME`, started early in the kernel) read when
//! guest-init started and when it answered:
//!
//! ```text
//! start ─ prepare ─▶ VMM called ─ VMM start ─▶ VMM runs ─ firmware and kernel load ─▶
//!   kernel clock 0 ─ kernel init ─▶ guest-init starts ─ agent start ─▶ handshake ─
//!   first exec ─▶ command started ─ command ─▶ exit status ─ power-off ─▶ VM gone
//! ```
//!
//! The handshake is seen by the host up to one connection retry late (the retry delay is at
//! most [`krunbox_protocol::client::RETRY_DELAY_MAX`]), which lands in "agent start".

use std::time::{Duration, Instant};

use serde::Serialize;

use super::session::SessionMarks;

/// How `--timings` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimingsFormat {
    /// One line of words.
    Text,
    /// One JSON object (milliseconds; `null` where a step did not happen or the agent did
    /// not say).
    Json,
}

/// The host's own marks of one run.
#[derive(Debug, Clone, Copy)]
pub struct RunMarks {
    /// krunbox started the run.
    pub start: Instant,
    /// The image and the VM's configuration were ready; the backend was called.
    pub vmm_called: Instant,
    /// The backend returned: the VMM runs.
    pub vmm_running: Instant,
    /// The VM and everything of it is gone.
    pub gone: Instant,
}

/// The steps of one run, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// Resolving the image (pulling, unpacking) and the configuration.
    pub prepare_ms: u64,
    /// Starting the VMM and its helpers.
    pub vmm_start_ms: u64,
    /// From the VMM running to the guest kernel's clock starting: firmware, loading (and
    /// decompressing) the kernel.
    pub firmware_and_kernel_load_ms: Option<u64>,
    /// The kernel's boot until it started guest-init.
    pub kernel_init_ms: Option<u64>,
    /// guest-init's set-up until the host saw its handshake.
    pub agent_start_ms: Option<u64>,
    /// From the handshake to the command running.
    pub first_exec_ms: Option<u64>,
    /// The command itself.
    pub command_ms: Option<u64>,
    /// From the exit status to the VM being gone.
    pub power_off_ms: Option<u64>,
    /// Everything.
    pub total_ms: u64,
    /// The warm pool whose booted VM the run took (then there was no VMM start or boot:
    /// "agent start" is attaching to the VM's agent).
    pub warm_pool: Option<String>,
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn between(from: Option<Instant>, to: Option<Instant>) -> Option<u64> {
    Some(ms(to?.saturating_duration_since(from?)))
}

impl Timings {
    /// The steps from the host's marks and the session's.
    pub fn new(run: &RunMarks, session: &SessionMarks) -> Self {
        let agent_seen = session
            .agent
            .map(|at| ms(at.saturating_duration_since(run.vmm_running)));
        // The guest's clock: 0 from an agent that does not report it.
        let guest = session
            .guest_clock
            .filter(|clock| clock.init_started_ms > 0 && clock.uptime_ms > 0);
        let (before_kernel, kernel, agent) = match (agent_seen, guest) {
            (Some(seen), Some(clock)) => {
                let before_kernel = seen.saturating_sub(clock.uptime_ms);
                // What the guest spent in guest-init, plus the host's lag in seeing it.
                let agent = seen
                    .saturating_sub(before_kernel)
                    .saturating_sub(clock.init_started_ms);
                (
                    Some(before_kernel),
                    Some(clock.init_started_ms),
                    Some(agent),
                )
            }
            (seen, _) => (None, None, seen),
        };
        Self {
            prepare_ms: ms(run.vmm_called.saturating_duration_since(run.start)),
            vmm_start_ms: ms(run.vmm_running.saturating_duration_since(run.vmm_called)),
            firmware_and_kernel_load_ms: before_kernel,
            kernel_init_ms: kernel,
            agent_start_ms: agent,
            first_exec_ms: between(session.agent, session.exec_started),
            command_ms: between(session.exec_started, session.exited),
            power_off_ms: between(session.exited, Some(run.gone)),
            total_ms: ms(run.gone.saturating_duration_since(run.start)),
            warm_pool: None,
        }
    }

    /// The steps of a run in a warm pool's VM (`run.vmm_called` and `run.vmm_running`: when
    /// it was claimed). The guest's boot clock says when that VM booted, not this run: unused.
    pub fn warm(run: &RunMarks, session: &SessionMarks, pool: &str) -> Self {
        let session = SessionMarks {
            guest_clock: None,
            ..*session
        };
        Self {
            warm_pool: Some(pool.to_owned()),
            ..Self::new(run, &session)
        }
    }

    /// The steps as printed.
    pub fn render(&self, format: TimingsFormat) -> String {
        match format {
            TimingsFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            TimingsFormat::Text => {
                let steps = [
                    ("prepare", Some(self.prepare_ms)),
                    ("VMM start", Some(self.vmm_start_ms)),
                    ("firmware and kernel load", self.firmware_and_kernel_load_ms),
                    ("kernel init", self.kernel_init_ms),
                    ("agent start", self.agent_start_ms),
                    ("first exec", self.first_exec_ms),
                    ("command", self.command_ms),
                    ("power-off", self.power_off_ms),
                ];
                let listed: Vec<String> = steps
                    .iter()
                    .filter_map(|(name, value)| value.map(|v| format!("{name} {v} ms")))
                    .collect();
                let warm = match &self.warm_pool {
                    Some(pool) => format!(" (warm: a booted VM of pool {pool})"),
                    None => String::new(),
                };
                format!(
                    "timings{warm}: {}; total {} ms",
                    listed.join(", "),
                    self.total_ms
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::session::GuestClock;

    #[test]
    fn the_steps_add_up_to_the_total_and_the_guest_clock_splits_the_boot() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let run = RunMarks {
            start,
            vmm_called: at(10),
            vmm_running: at(60),
            gone: at(2000),
        };
        let session = SessionMarks {
            // Seen 1500 ms after the VMM ran; the guest clock said 1200 then, and guest-init
            // started at 1000 on it.
            agent: Some(at(1560)),
            guest_clock: Some(GuestClock {
                init_started_ms: 1000,
                uptime_ms: 1200,
            }),
            exec_started: Some(at(1570)),
            exited: Some(at(1600)),
        };
        let timings = Timings::new(&run, &session);
        assert_eq!(
            timings,
            Timings {
                prepare_ms: 10,
                vmm_start_ms: 50,
                firmware_and_kernel_load_ms: Some(300),
                kernel_init_ms: Some(1000),
                agent_start_ms: Some(200),
                first_exec_ms: Some(10),
                command_ms: Some(30),
                power_off_ms: Some(400),
                total_ms: 2000,
                warm_pool: None,
            }
        );
        // In a warm pool's VM the guest's boot clock is about its boot, long ago: not used.
        let warm = Timings::warm(&run, &session, "p");
        assert_eq!(warm.warm_pool.as_deref(), Some("p"));
        assert_eq!(warm.kernel_init_ms, None);
        assert!(warm.render(TimingsFormat::Text).contains("pool p"));
        let sum: u64 = [
            timings.prepare_ms,
            timings.vmm_start_ms,
            300,
            1000,
            200,
            10,
            30,
            400,
        ]
        .iter()
        .sum();
        assert_eq!(sum, timings.total_ms);
        assert!(timings.render(TimingsFormat::Text).starts_with(
            "timings: prepare 10 ms, VMM start 50 ms, firmware and kernel load 300 ms"
        ));
        assert!(timings
            .render(TimingsFormat::Json)
            .contains("\"kernel_init_ms\":1000"));
    }

    #[test]
    fn an_agent_that_does_not_report_its_clock_leaves_the_guest_split_out() {
        let start = Instant::now();
        let run = RunMarks {
            start,
            vmm_called: start,
            vmm_running: start,
            gone: start + Duration::from_millis(900),
        };
        let session = SessionMarks {
            agent: Some(start + Duration::from_millis(700)),
            guest_clock: Some(GuestClock {
                init_started_ms: 0,
                uptime_ms: 0,
            }),
            ..SessionMarks::default()
        };
        let timings = Timings::new(&run, &session);
        assert_eq!(timings.kernel_init_ms, None);
        assert_eq!(timings.agent_start_ms, Some(700));
        assert!(timings
            .render(TimingsFormat::Json)
            .contains("\"command_ms\":null"));
    }
}
