//! The `shardgate` binary: parse the command line, load and validate config,
//! check the machine's limits, run. Startup errors map to exit codes:
//! 2 for bad config or arguments, 1 for everything else (for `keys`: not
//! found or IO).

use clap::{Parser, Subcommand};
use shardgate_core::cli::keys::KeysArgs;
use shardgate_core::config::{Config, DEFAULT_CONFIG};
use shardgate_core::runtime::ExecutorSettings;
use shardgate_core::serve;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static GLOBAL: shardgate_core::allocator::Mimalloc = shardgate_core::allocator::Mimalloc;

#[derive(Parser)]
#[command(name = "shardgate", version, about = "A thread-per-core AI gateway")]
struct Cli {
    /// `json`: one JSON object per log line (`ts`, `level`, `target`,
    /// `msg`), for log shippers; `text` (the default) for people. Also
    /// `SHARDGATE_LOG_FORMAT`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The logger: `RUST_LOG` filters (info by default), in `format`. Log
/// lines never hold a secret: nothing logs one.
fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            use std::io::Write as _;
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default, with the bundled config when none is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Do not pin shards to cores (for shared machines and tests).
        #[arg(long)]
        no_pin: bool,
        /// Busy-poll this long before parking an idle shard (e.g. 50us): lower
        /// latency at light load for some CPU.
        #[arg(long, value_parser = humantime::parse_duration)]
        spin: Option<Duration>,
    },
    /// Validate a config file and exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create, revoke and list virtual API keys (works while the gateway runs).
    Keys(KeysArgs),
    /// Verify, tail and query the audit log (works while the gateway runs).
    Audit(shardgate_core::cli::audit::AuditArgs),
    /// Provider API keys stored encrypted in the data directory.
    Providers(shardgate_core::cli::providers::ProvidersArgs),
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| format!("{}: {e}", p.display())),
        None => Config::parse(DEFAULT_CONFIG, &|k| std::env::var(k).ok())
            .map_err(|e| format!("bundled config: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format =
        cli.log_format
            .unwrap_or_else(|| match std::env::var("SHARDGATE_LOG_FORMAT").as_deref() {
                Ok("json") => LogFormat::Json,
                _ => LogFormat::Text,
            });
    init_logging(format);
    let command = cli.command.unwrap_or(Command::Serve {
        config: None,
        no_pin: false,
        spin: None,
    });
    match command {
        Command::Keys(args) => match shardgate_core::cli::keys::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Providers(args) => match shardgate_core::cli::providers::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Audit(args) => match shardgate_core::cli::audit::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Check { config } => match load(Some(&config)) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} providers, {} models)",
                    config.display(),
                    c.listeners.len(),
                    c.providers.len(),
                    c.models.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            config,
            no_pin,
            spin,
        } => {
            shardgate_core::tunables::reexec_if_wanted();
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            raise_open_files_limit(&cfg);
            let store = match shardgate_core::store::Store::open(&cfg.store) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: store {}: {e}", cfg.store.dir.display());
                    return ExitCode::from(1);
                }
            };
            let shards = cfg.shards;
            let opts = serve::Options {
                executor: ExecutorSettings {
                    pin: !no_pin,
                    spin_before_park: spin,
                },
                config_path: config.clone(),
                store,
            };
            let result = serve::run(cfg, opts, |addrs| {
                for a in addrs {
                    println!("shardgate listening on {a} ({shards} shards)");
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Every client and upstream connection is a file descriptor: raise the soft
/// limit to the hard limit, as Go's runtime and nginx's
/// `worker_rlimit_nofile` do, and say so when it fails or stays below what
/// the configured connection limits allow (past it, clients get a 503 until
/// descriptors free up).
fn raise_open_files_limit(cfg: &Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        log::warn!(
            "cannot read the open files limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit with a valid pointer to a local struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            log::warn!(
                "cannot raise the open files limit from {} to {}: {}",
                lim.rlim_cur,
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    // A client connection and the upstream connection it may hold.
    let wanted = (cfg.shards as u64)
        .saturating_mul(cfg.limits.max_connections_per_shard as u64)
        .saturating_mul(2);
    if wanted > lim.rlim_cur {
        log::warn!(
            "open files limit is {}, below the {wanted} descriptors that {} shards x limits.max_connections_per_shard {} (client and upstream) may use: past it clients get a 503; raise `ulimit -n` / LimitNOFILE or lower the limit",
            lim.rlim_cur,
            cfg.shards,
            cfg.limits.max_connections_per_shard
        );
    }
}
