//! `shardgate providers set-key | remove-key | list | rotate-kek`: provider
//! credentials kept encrypted in the data directory
//! (`crate::store::provider_keys`), offline or while a gateway runs (it
//! reloads its config when the file changes, within a second).
//!
//! `set-key` reads the credential from stdin, never from the command line
//! (argv is visible to every user of the host and kept in shell history).
//! Nothing prints a credential: `list` shows the provider, the last four
//! characters and when it was set or re-wrapped.
//!
//! Exit codes: 0 ok, 1 not found or IO, 2 bad arguments or config.

use crate::config::{Config, ConfigError};
use crate::store::provider_keys::{self, ProviderKeyError, API_KEY};
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ProvidersArgs {
    #[command(subcommand)]
    pub command: ProvidersCommand,
    /// The gateway config (its `store.dir`, `store.kek` and providers):
    /// required.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ProvidersCommand {
    /// Store the API key of a configured provider, read from stdin; it
    /// replaces the config's `api_key`.
    SetKey { provider: String },
    /// Remove a stored key (the config's `api_key` applies again).
    RemoveKey { provider: String },
    /// The stored keys: provider, last four characters, when set.
    List,
    /// Re-wrap every stored key's data key under `store.kek` (with the old
    /// KEK in `store.kek_previous`).
    RotateKek,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    #[error("{0}")]
    BadArgs(String),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Store(#[from] ProviderKeyError),
}

impl ProvidersError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ProvidersError::BadArgs(_) | ProvidersError::Config(_) => 2,
            ProvidersError::Store(ProviderKeyError::NoKek | ProviderKeyError::Invalid(_)) => 2,
            ProvidersError::NotFound(_) | ProvidersError::Store(_) => 1,
        }
    }
}

pub fn run(args: ProvidersArgs) -> Result<(), ProvidersError> {
    let Some(config) = args.config.as_deref() else {
        return Err(ProvidersError::BadArgs(
            "--config is required: the gateway config names the data directory, the KEK and the providers".into(),
        ));
    };
    let (store, keks, names) = Config::load_provider_store(config)?;
    let dir = store.dir;
    match args.command {
        ProvidersCommand::SetKey { provider } => {
            if !names.contains(&provider) {
                return Err(ProvidersError::NotFound(format!(
                    "no provider `{provider}` in {}",
                    config.display()
                )));
            }
            let mut input = String::new();
            std::io::stdin()
                .take(provider_keys::MAX_SECRET as u64 + 2)
                .read_to_string(&mut input)
                .map_err(|e| {
                    ProvidersError::BadArgs(format!("cannot read the key from stdin: {e}"))
                })?;
            let key = input.trim_end_matches(['\n', '\r']);
            let record =
                provider_keys::seal(&keks, &provider, API_KEY, key, provider_keys::now_ms())?;
            let shown = provider_keys::listing(&record);
            provider_keys::put(&dir, &keks, record)?;
            print(&shown, args.json, "stored");
        }
        ProvidersCommand::RemoveKey { provider } => {
            let removed = provider_keys::update(&dir, |rs| {
                let before = rs.len();
                rs.retain(|r| r.provider != provider);
                Ok(before != rs.len())
            })?;
            if !removed {
                return Err(ProvidersError::NotFound(format!(
                    "no stored key for `{provider}`"
                )));
            }
            println!("removed the stored key of `{provider}`");
        }
        ProvidersCommand::List => {
            let records = provider_keys::load(&dir)?;
            if args.json {
                let all: Vec<_> = records.iter().map(provider_keys::listing).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                for r in &records {
                    print(&provider_keys::listing(r), false, "");
                }
            }
        }
        ProvidersCommand::RotateKek => {
            let now = provider_keys::now_ms();
            let changed = provider_keys::update(&dir, |rs| {
                let mut n = 0;
                for r in rs.iter_mut() {
                    if provider_keys::rewrap(&keks, r, now)? {
                        n += 1;
                    }
                }
                Ok(n)
            })?;
            let id = keks.current.as_ref().map_or("", |k| k.id());
            println!("re-wrapped {changed} stored keys under KEK {id}");
        }
    }
    Ok(())
}

fn print(v: &serde_json::Value, json: bool, verb: &str) {
    if json {
        println!("{v}");
        return;
    }
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let lead = if verb.is_empty() {
        String::new()
    } else {
        format!("{verb}: ")
    };
    println!(
        "{lead}{} {} ...{} (KEK {})",
        s("provider"),
        s("field"),
        s("last4"),
        s("kek_id")
    );
}
