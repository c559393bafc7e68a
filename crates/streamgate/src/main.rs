//! `streamgate`: run the gateway, or check a configuration file.
#![deny(rust_2018_idioms, unsafe_code)]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use streamgate_config::model::LogFormat;

/// jemalloc instead of glibc malloc. Measured with 1,000 WebSocket sessions opened and closed per
/// round: glibc kept 45-54 MB after close and grew round after round (fragmentation from the
/// handshake bursts); jemalloc with a purging background thread (see .cargo/config.toml) goes
/// back to within ~5 MB of the process at rest every round.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An edge proxy on Pingora: HTTP routes, and Kafka topics over WebSocket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(short = 'c', long = "config", default_value = "conf/streamgate.toml")]
    config: PathBuf,
    /// Check the configuration (including TLS files and node names) and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Take the listening sockets over from the running gateway instead of binding them: start
    /// this, then send the old process SIGQUIT (zero-downtime upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match streamgate_config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if cli.test {
        return match streamgate::prepare(&config) {
            Ok(_) => {
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes)",
                    cli.config.display(),
                    config.server.listen.len() + config.server.tls_listen.len(),
                    config.upstreams.len(),
                    config.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", cli.config.display());
                ExitCode::from(1)
            }
        };
    }
    init_logging(config.server.log_format);
    let server = match streamgate::build(&config, &cli.config, cli.upgrade) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{}: {e}", cli.config.display());
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        config = %cli.config.display(),
        listen = ?config.server.listen,
        tls_listen = ?config.server.tls_listen.iter().map(|l| l.address).collect::<Vec<_>>(),
        routes = config.routes.len(),
        "streamgate {} started",
        env!("CARGO_PKG_VERSION")
    );
    server.run_forever()
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STREAMGATE_LOG")
        // rskafka logs every broker connection at info: per-session noise at the edge.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rskafka=warn"));
    // Colours for people at a terminal; plain text for files and log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
