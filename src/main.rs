//! The `autoinvoice` command line (SPEC §8): parse, load the configuration, call one command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use autoinvoice::commands::{self, CliError};
use autoinvoice::config::Source;

#[derive(Parser)]
#[command(
    name = "autoinvoice",
    version,
    about = "Automatic affiliate invoices, on each network's schedule"
)]
struct Cli {
    /// Config file (default config/autoinvoice.toml, if it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database URL, overriding the config file and the environment.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon (foreground, systemd Type=notify).
    Serve {
        /// Start the clock at this instant (RFC 3339); it then advances in real time.
        #[arg(long, value_name = "RFC3339")]
        clock_start: Option<String>,
    },
    /// Apply database migrations, then exit.
    Migrate,
    /// Execute every run due at NOW for the owned tenants, then exit.
    RunDue {
        /// The instant to run at (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        now: String,
        /// Only this tenant.
        #[arg(long, value_name = "ID")]
        tenant: Option<i64>,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Dry run of the runs due at an instant for one tenant; writes nothing.
    Preview {
        #[arg(long, value_name = "ID")]
        tenant: i64,
        #[arg(long, value_name = "RFC3339")]
        at: String,
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration, then exit.
    CheckConfig,
    /// Seed a demo dataset on the configured database (SQLite by default), run what is due
    /// now, and show the invoices and skips.
    Demo,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// clap's multi-line usage errors, folded into one line that still names the argument.
fn one_line(message: &str) -> String {
    message
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let source = Source {
        file: cli.config.clone(),
        database_url: cli.database_url.clone(),
    };
    let settings = commands::load_settings(&source)?;
    let quiet = matches!(cli.command, Command::Demo);
    let set_log_level = commands::init_logging(
        if quiet { "warn" } else { &settings.log.level },
        settings.log.format,
    );
    if let Command::Serve { clock_start } = &cli.command {
        let clock_start = clock_start
            .as_deref()
            .map(|s| commands::parse_instant("--clock-start", s))
            .transpose()?;
        return autoinvoice::daemon::serve(source, settings, clock_start, set_log_level);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))?;
    match cli.command {
        Command::Serve { .. } => unreachable!("handled above"),
        Command::CheckConfig => Ok(commands::check_config(&settings)),
        Command::Migrate => runtime.block_on(commands::migrate(&settings)),
        Command::RunDue { now, tenant, json } => {
            let now = commands::parse_instant("--now", &now)?;
            runtime.block_on(commands::run_due(&settings, now, tenant, json))
        }
        Command::Preview { tenant, at, json } => {
            let at = commands::parse_instant("--at", &at)?;
            runtime.block_on(commands::preview(&settings, tenant, at, json))
        }
        Command::Demo => runtime.block_on(autoinvoice::demo::run(&settings)),
    }
}
