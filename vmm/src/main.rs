//! krunbox: run commands in micro-VMs.
//!
//! Layout: `cli/` parses and runs subcommands; `backend/` starts VMs (one module per
//! backend, behind the `Backend` trait; QEMU's guest kernels and initramfs are its own);
//! `guest/` prepares what a guest is given (IMAGE → root filesystem and run defaults through
//! the `krunbox-image` store, shares, host CAs, the command, the agent binary); `rundir` and
//! `lock` keep per-VM state safe
//! between concurrent krunbox processes; `self_spawn` starts krunbox's own jobs (supervisor,
//! VMM, gateway, sandbox monitor) as copies of this executable.

mod api;
mod backend;
mod bounded;
mod cli;
mod elf;
mod guest;
mod io_error;
mod lock;
mod names;
mod oci;
mod paths;
mod pool;
mod private_dir;
mod review;
mod rundir;
mod sandbox;
mod self_spawn;
mod volumes;

use clap::Parser;

/// Exit code for krunbox's own failures (as `docker run`).
const FAILURE: i32 = 125;

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `krunbox-oci` (a link to this binary), or `krunbox oci`: the OCI runtime command line.
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|name| name == "krunbox-oci");
    if called || args.get(1).is_some_and(|a| a == "oci") {
        if !called {
            args.remove(0);
        }
        std::process::exit(oci::main(args));
    }
    let argv = match cli::profile::expand(args) {
        Ok(argv) => argv,
        Err(err) => {
            eprintln!("krunbox: {err}");
            std::process::exit(FAILURE);
        }
    };
    // Bad arguments are krunbox's failure, 125 as documented (clap's own exit is 2);
    // `--help` and `--version` exit 0.
    let cli = match cli::Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            std::process::exit(if err.use_stderr() { FAILURE } else { 0 });
        }
    };
    if let cli::Command::Internal(job) = &cli.command {
        // A copy of krunbox started for one job, which sets up its own logging.
        std::process::exit(job.main());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KRUNBOX_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let result: anyhow::Result<i32> = match cli.command {
        cli::Command::Run(args) => cli::run::run(*args).map_err(Into::into),
        cli::Command::Pull(args) => cli::images::pull(&args).map_err(Into::into),
        cli::Command::Images(args) => cli::images::images(&args).map_err(Into::into),
        cli::Command::Rmi(args) => cli::images::rmi(&args).map_err(Into::into),
        cli::Command::Prune(args) => cli::images::prune(&args).map_err(Into::into),
        cli::Command::Doctor => Ok(cli::doctor::run()),
        cli::Command::Serve(args) => cli::serve::serve(args).map_err(Into::into),
        cli::Command::Mcp => api::mcp::serve_stdio().map_err(Into::into),
        cli::Command::Kernel(command) => cli::kernel::run(&command).map_err(Into::into),
        cli::Command::Volume(command) => cli::volume::run(command).map_err(Into::into),
        cli::Command::Diff(args) => cli::review::diff(&args).map_err(Into::into),
        cli::Command::Accept(args) => cli::review::accept(&args).map_err(Into::into),
        cli::Command::Reject(args) => cli::review::reject(&args).map_err(Into::into),
        cli::Command::Pool(command) => cli::pool::run(command).map_err(Into::into),
        cli::Command::Create(args) => cli::sandbox::create(*args).map_err(Into::into),
        cli::Command::Start(args) => cli::sandbox::start(args).map_err(Into::into),
        cli::Command::Exec(args) => cli::sandbox::exec(args).map_err(Into::into),
        cli::Command::Cp(args) => cli::sandbox::cp(args).map_err(Into::into),
        cli::Command::Stop(args) => cli::sandbox::stop(args).map_err(Into::into),
        cli::Command::Pause(args) => cli::sandbox::pause(args).map_err(Into::into),
        cli::Command::Resume(args) => cli::sandbox::resume(args).map_err(Into::into),
        cli::Command::Rm(args) => cli::sandbox::rm(args).map_err(Into::into),
        cli::Command::Ps(args) => cli::sandbox::ps(args).map_err(Into::into),
        cli::Command::Inspect(args) => cli::sandbox::inspect(args).map_err(Into::into),
        cli::Command::Logs(args) => cli::sandbox::logs(args).map_err(Into::into),
        cli::Command::Stats(args) => cli::sandbox::stats(args).map_err(Into::into),
        cli::Command::Internal(_) => Ok(0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("krunbox: {err:#}");
            std::process::exit(FAILURE);
        }
    }
}
