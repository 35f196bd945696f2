//! `shardgate-bench`: LLM-aware load generator, mock inference server and
//! side-by-side comparisons for Shardgate.
//!
//! - `mock`: a deterministic mock provider server speaking the OpenAI,
//!   Anthropic, Gemini and Bedrock dialects (the upstream for gateway tests
//!   and benchmarks), behaviour chosen by model name; TLS with
//!   `--tls-cert/--tls-key`.
//! - `run`: a load generator, closed loop or open loop at a rate (latency
//!   from the intended send time), OpenAI or Anthropic shape, with latency,
//!   TTFT, inter-token latency and tokens/s percentiles, over `http://` or
//!   `https://` (`tls`: one handshake per keep-alive connection).
//! - `compare`: the same load against several targets, interleaved, with
//!   CPU per request.
//!
//! What it must never do: share the gateway's HTTP code paths. It depends on
//! `shardgate-proto` only for `mock` (the shared deterministic bodies), on
//! `shardgate-providers` only for the mock's Bedrock event-stream encoder
//! (a pure function, checked against AWS's published frames), and parses
//! HTTP itself on `httparse`, so a framing bug in the gateway cannot hide
//! behind the same bug in the tool that measures it.

#[cfg(test)]
mod alloc_count;
mod args;
mod arrivals;
mod compare;
mod error;
mod http;
mod loadgen;
mod machine;
mod mock;
mod progress;
mod report;
mod shards;
mod stream_meter;
mod tls;
mod workload;

use clap::{Args, Parser, Subcommand};
use error::BenchError;
use shards::ShardPlan;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[cfg(not(test))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Unit tests count allocations per thread (`alloc_count`).
#[cfg(test)]
#[global_allocator]
static GLOBAL: alloc_count::Counting = alloc_count::Counting;

#[derive(Debug, Parser)]
#[command(name = "shardgate-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a mock provider API: OpenAI, Anthropic, Gemini and Bedrock
    /// dialects on one port, routed by path.
    #[command(after_long_help = MOCK_HELP)]
    Mock(MockArgs),
    /// Load against one URL: closed loop (default) or open loop (`--rate`).
    Run(RunArgs),
    /// The same load against several targets, interleaved round-robin.
    Compare(CompareArgs),
}

const MOCK_HELP: &str = "\
Routes (one port):
  OpenAI     POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models
  Anthropic  POST /v1/messages                       (needs anthropic-version)
  Gemini     POST /v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse,
                  :embedContent, :batchEmbedContents
  Bedrock    POST /model/{modelId}/converse, /model/{modelId}/converse-stream (event-stream)
  GET /healthz

With --require-key KEY: OpenAI wants `Authorization: Bearer KEY`, Anthropic `x-api-key: KEY`,
Gemini `x-goog-api-key: KEY` (or ?key=KEY), Bedrock any `Authorization: AWS4-HMAC-SHA256 ...`
(signature not checked) or `Bearer KEY`.

Behaviour by model name (Gemini and Bedrock: the model in the path), in every dialect:
  mock-tokens-N  mock-ttft-200ms  mock-tps-50  mock-429 / -500 / -503 (the dialect's error JSON; 429 and 503 with retry-after: 1)
  mock-cut-after-N (stream: drop after N text/argument events; else close after the head)  mock-hang
  combined: mock-tokens-20-ttft-50ms-tps-1000

Tool calls: when the request offers tools (OpenAI/Anthropic `tools`, Gemini
`tools[].functionDeclarations`, Bedrock `toolConfig.tools`), tool choice is not \"none\", and the
last message is not a tool result, the answer is one call of the FIRST tool with arguments
{\"query\":\" lorem ipsum dolor\"} (ids call_mock_0 / toolu_mock_0 / tooluse_mock_0; Gemini none),
finish reason tool_calls / tool_use, streamed as the dialect's native tool-call deltas
(5 argument fragments; Gemini one functionCall part); usage counts 5 output tokens.
Otherwise the answer is text: the deterministic words \" lorem ipsum dolor sit ...\".";

#[derive(Debug, Args)]
struct MockArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Executor threads, all accepting on the same port (SO_REUSEPORT).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Pin shard i to the i-th allowed CPU.
    #[arg(long)]
    pin: bool,
    /// Independent servers on consecutive ports (each its own ephemeral
    /// port with port 0).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Require KEY in each dialect's auth header (see below); /healthz is open.
    #[arg(long, value_name = "KEY")]
    require_key: Option<String>,
    /// Completion length when the model name doesn't say (`mock-tokens-N`).
    #[arg(long, default_value_t = 16)]
    output_tokens: usize,
    /// Time to first token when the model name doesn't say (`mock-ttft-Nms`):
    /// fixed (`200ms`) or drawn per request: `normal:200ms,50ms`,
    /// `uniform:100ms,300ms`, `exp:200ms` (exponential, long tail).
    #[arg(long, default_value = "0ms", value_parser = mock::inject::parse_ttft)]
    ttft: mock::inject::TtftDist,
    /// Share of requests (0..1) answered with `--error-status`, in the
    /// dialect's own error JSON.
    #[arg(long, default_value = "0", value_parser = mock::inject::parse_rate)]
    error_rate: f64,
    /// Status of the injected errors (429 rate limit, 500, 503 overloaded...).
    #[arg(long, default_value_t = 503)]
    error_status: u16,
    /// Share of streamed answers (0..1) cut after a random number of tokens.
    #[arg(long, default_value = "0", value_parser = mock::inject::parse_rate)]
    cut_rate: f64,
    /// Seed of the injected randomness (each shard adds its index).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Streaming tokens per second when the model name doesn't say; 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    tps: u32,
    /// Serve TLS (ALPN http/1.1) with this certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// Load options shared by `run` and `compare`.
#[derive(Debug, Args)]
struct LoadArgs {
    /// Measured time per run.
    #[arg(long, default_value = "10s", value_parser = args::parse_duration)]
    duration: Duration,
    /// Unmeasured time before it, per run.
    #[arg(long, default_value = "2s", value_parser = args::parse_duration)]
    warmup: Duration,
    /// Open the connections evenly over this time (from the start of the
    /// warmup) instead of all at once, so that equal-length streams don't
    /// run in step; keep it inside the warmup.
    #[arg(long, default_value = "0s", value_parser = args::parse_duration)]
    ramp_up: Duration,
    /// Load generator shards (default: every allowed CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// Pin shard i to the i-th allowed CPU.
    #[arg(long)]
    pin: bool,
    /// Model named in the request body.
    #[arg(long, default_value = "demo")]
    model: String,
    /// Ask for a stream (`stream: true`, `include_usage`).
    #[arg(long)]
    stream: bool,
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Sent as `Authorization: Bearer KEY` (OpenAI) or `x-api-key` (Anthropic).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Request shape; default: `anthropic` for `.../messages` URLs, else `openai`.
    #[arg(long, value_enum)]
    api: Option<workload::Api>,
    /// Open loop: send this many requests per second in total, latency
    /// measured from each request's intended send time. Without it: closed
    /// loop.
    #[arg(long, value_name = "REQ_PER_S")]
    rate: Option<f64>,
    /// Open-loop arrival process.
    #[arg(long, value_enum, default_value = "poisson", requires = "rate")]
    arrivals: arrivals::Arrivals,
    /// Prompts from JSONL: `{"prompt": "..."}` or `{"messages": [...]}` per
    /// line, optional `"max_tokens"`.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt_tokens")]
    dataset: Option<std::path::PathBuf>,
    /// Synthetic prompts of exactly this many cl100k_base tokens: `512`,
    /// `normal:512,64` or `uniform:100,1000`.
    #[arg(long, value_name = "DIST", value_parser = workload::parse_token_dist)]
    prompt_tokens: Option<workload::TokenDist>,
    /// Seed for arrivals and synthetic prompts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Connect timeout, TLS handshake timeout, and longest wait for any
    /// single read.
    #[arg(long, default_value = "10s", value_parser = args::parse_duration)]
    timeout: Duration,
    /// https: also trust the CAs in this PEM file (beside the webpki roots).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<std::path::PathBuf>,
    /// https: DO NOT VERIFY the server's certificate (any issuer, any name).
    /// Only for benchmarking a self-signed test server you control; the
    /// report says INSECURE.
    #[arg(long, conflicts_with = "ca_file")]
    insecure: bool,
    /// Print one JSON object instead of text.
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Print the report as Markdown.
    #[arg(long)]
    markdown: bool,
}

impl LoadArgs {
    fn shape(&self) -> Result<workload::Shape, BenchError> {
        let open_loop = match self.rate {
            Some(rate) if !(rate > 0.0 && rate.is_finite()) => {
                return Err(BenchError::Usage("--rate must be positive".into()))
            }
            Some(rate) => Some(workload::OpenLoop {
                rate,
                arrivals: self.arrivals,
            }),
            None => None,
        };
        let prompts = match (&self.dataset, self.prompt_tokens) {
            (Some(path), _) => workload::PromptSource::Dataset(path.clone()),
            (None, Some(dist)) => workload::PromptSource::Synthetic(dist),
            (None, None) => workload::PromptSource::Default,
        };
        Ok(workload::Shape {
            api: self.api,
            prompts,
            open_loop,
            seed: self.seed,
        })
    }

    fn tls(&self) -> tls::TlsOptions {
        tls::TlsOptions {
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
        }
    }

    fn shard_plan(&self) -> ShardPlan {
        ShardPlan {
            count: self.shards.unwrap_or_else(ShardPlan::default_count).max(1),
            pin: self.pin,
        }
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Target, e.g. http://127.0.0.1:8080/v1/chat/completions (or https://).
    #[arg(long, value_parser = args::parse_url)]
    url: args::HttpUrl,
    /// Connections: the concurrency of a closed loop, the most requests in
    /// flight in an open loop.
    #[arg(long, visible_alias = "concurrency", default_value_t = 64)]
    connections: usize,
    /// Measure the CPU time of these processes together over the
    /// measurement window (`watched_cpu_us`, per request), e.g. the
    /// gateway, or every nginx worker: `--watch-pid 101,102`.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    watch_pid: Vec<u32>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// NAME=URL[,pid=N][,model=M][,api-key=K]; the first is the baseline.
    #[arg(long = "target", required = true, value_parser = args::parse_target)]
    targets: Vec<args::TargetSpec>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrency levels, e.g. `1,64`.
    #[arg(long, default_value = "64", value_delimiter = ',')]
    connections: Vec<usize>,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate-bench: {e}");
            match e {
                BenchError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(command: Command) -> Result<(), BenchError> {
    match command {
        Command::Mock(a) => mock::serve(mock::MockConfig {
            listen: a.listen,
            tls: match (&a.tls_cert, &a.tls_key) {
                (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
                _ => None,
            },
            shards: ShardPlan {
                count: a.shards.max(1),
                pin: a.pin,
            },
            instances: a.instances.max(1),
            require_key: a.require_key,
            injection: mock::inject::Injection {
                ttft: a.ttft,
                error_rate: a.error_rate,
                error_status: a.error_status,
                cut_rate: a.cut_rate,
            },
            seed: a.seed,
            defaults: shardgate_proto::mock::Behaviour {
                output_tokens: a.output_tokens,
                ttft_ms: 0,
                tokens_per_second: (a.tps > 0).then_some(a.tps),
                ..shardgate_proto::mock::Behaviour::default()
            },
        }),
        Command::Run(a) => {
            if a.connections == 0 {
                return Err(BenchError::Usage("--connections must be at least 1".into()));
            }
            let cfg = loadgen::LoadConfig {
                url: a.url,
                connections: a.connections,
                duration: a.load.duration,
                warmup: a.load.warmup,
                shards: a.load.shard_plan(),
                model: a.load.model.clone(),
                stream: a.load.stream,
                max_tokens: a.load.max_tokens,
                api_key: a.load.api_key.clone(),
                timeout: a.load.timeout,
                shape: a.load.shape()?,
                ramp_up: a.load.ramp_up,
                progress: true,
                tls: a.load.tls(),
            };
            let (report, _) = loadgen::run_load(&cfg, &a.watch_pid)?;
            if a.load.json {
                println!("{}", to_json(&report)?);
            } else if a.load.markdown {
                print!("{}", report::render_markdown(&report));
            } else {
                print!("{}", report::render_text(&report));
            }
            Ok(())
        }
        Command::Compare(a) => {
            if a.connections.is_empty() || a.connections.contains(&0) {
                return Err(BenchError::Usage("--connections must be at least 1".into()));
            }
            let cfg = compare::CompareConfig {
                targets: a.targets,
                rounds: a.rounds,
                duration: a.load.duration,
                warmup: a.load.warmup,
                connections: a.connections,
                shards: a.load.shard_plan(),
                model: a.load.model.clone(),
                stream: a.load.stream,
                max_tokens: a.load.max_tokens,
                api_key: a.load.api_key.clone(),
                timeout: a.load.timeout,
                shape: a.load.shape()?,
                ramp_up: a.load.ramp_up,
                tls: a.load.tls(),
            };
            let report = compare::run_compare(&cfg, |line| eprintln!("{line}"))?;
            let json = to_json(&report)?;
            if let Some(path) = &a.out {
                std::fs::write(path, format!("{json}\n"))
                    .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
            }
            if a.load.json {
                println!("{json}");
            } else {
                print!("{}", compare::render_table(&report));
            }
            Ok(())
        }
    }
}

fn to_json(v: &impl serde::Serialize) -> Result<String, BenchError> {
    serde_json::to_string(v).map_err(|e| BenchError::Runtime(format!("json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_mock() {
        let cli = Cli::try_parse_from([
            "shardgate-bench",
            "mock",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--instances",
            "3",
            "--require-key",
            "k",
            "--output-tokens",
            "4",
            "--ttft",
            "50ms",
            "--tps",
            "100",
        ])
        .unwrap();
        let Command::Mock(m) = cli.command else {
            panic!("not mock")
        };
        assert_eq!(m.shards, 2);
        assert_eq!(m.instances, 3);
        assert_eq!(m.require_key.as_deref(), Some("k"));
        assert_eq!(
            m.ttft,
            mock::inject::TtftDist::Fixed(Duration::from_millis(50))
        );
        assert_eq!(m.tps, 100);
        assert!(m.tls_cert.is_none());
        let half = ["shardgate-bench", "mock", "--tls-cert", "c.pem"];
        assert!(Cli::try_parse_from(half).is_err());
    }

    #[test]
    fn parses_run() {
        let cli = Cli::try_parse_from([
            "shardgate-bench",
            "run",
            "--url",
            "http://127.0.0.1:9/v1/chat/completions",
            "--connections",
            "8",
            "--duration",
            "3s",
            "--warmup",
            "0",
            "--stream",
            "--json",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.connections, 8);
        assert_eq!(r.load.duration, Duration::from_secs(3));
        assert_eq!(r.load.warmup, Duration::ZERO);
        assert!(r.load.stream && r.load.json);
        assert_eq!(r.load.model, "demo");
        assert!(r.load.shard_plan().count >= 1);
        assert!(r.load.tls().ca_file.is_none() && !r.load.insecure);
        assert!(Cli::try_parse_from(["shardgate-bench", "run", "--url", "ftp://x/"]).is_err());
        let cli = Cli::try_parse_from([
            "shardgate-bench",
            "run",
            "--url",
            "https://localhost:9/v1/messages",
            "--ca-file",
            "ca.pem",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert!(r.url.tls);
        assert_eq!(r.load.tls().ca_file, Some("ca.pem".into()));
        let both = [
            "--url",
            "https://localhost:9/",
            "--ca-file",
            "c",
            "--insecure",
        ];
        assert!(Cli::try_parse_from(["shardgate-bench", "run"].iter().chain(&both)).is_err());
    }

    #[test]
    fn parses_compare() {
        let cli = Cli::try_parse_from([
            "shardgate-bench",
            "compare",
            "--target",
            "direct=http://127.0.0.1:1/v1/chat/completions,model=mock-1",
            "--target",
            "gateway=http://127.0.0.1:2/v1/chat/completions,pid=42,model=demo",
            "--connections",
            "1,64",
            "--rounds",
            "2",
        ])
        .unwrap();
        let Command::Compare(c) = cli.command else {
            panic!("not compare")
        };
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[1].pid, Some(42));
        assert_eq!(c.connections, vec![1, 64]);
        assert_eq!(c.rounds, 2);
        assert!(Cli::try_parse_from(["shardgate-bench", "compare"]).is_err());
    }
}
