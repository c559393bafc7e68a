//! `make bench`: Streamgate against its baselines, each measured in the same run.
//!
//! 1. consume throughput: through the gateway vs rskafka reading the broker directly;
//! 2. protocol overhead: `cmd_ping` round trips vs a bare tokio-tungstenite echo server;
//! 3. fan-out: 1,000 consumers tailing one partition while a producer appends;
//! 4. connection cost: RSS per idle pub/sub session, over three open/close rounds;
//! 5. HTTP proxying: requests/s and latency vs nginx and bare Pingora (alone, and doing a
//!    proxy's duties: forwarding headers, upstream timeouts), with wrk;
//! 6. push vs pull fan-out: subscribers on one and on eight partitions, push subscriptions
//!    against APISIX's fetch loop, in the same run.
//!
//! Everything runs on 127.0.0.1 and is bounded in count and time. Prints a Markdown table of
//! medians (with min and max) over repetitions; `BENCHMARKS.md` records a run.
#![deny(rust_2018_idioms, unsafe_code)]

mod baselines;
mod connections;
mod consume;
mod fan_out;
mod filtered;
mod gateway;
mod http;
mod measure;
mod pings;
mod push;
mod report;

use crate::{
    baselines::*, connections::*, consume::*, fan_out::*, filtered::*, http::*, measure::*,
    pings::*, push::*, report::*,
};
use clap::{Parser, Subcommand};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;
use streamgate_testkit::Broker;

#[derive(Parser)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Cmd>,
    /// The release `streamgate` binary.
    #[arg(long, default_value = "target/release/streamgate")]
    pub(crate) gateway: PathBuf,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
    /// Run only these scenarios (1-7).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<u8>,
    /// Scale record counts and durations down (e.g. 0.1) for a quick smoke run.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) scale: f64,
    /// Scenario 7's numbers of key-filtered WebSocket subscribers.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    pub(crate) filtered: Vec<usize>,
    /// Scenario 7's number of key-filtered Server-Sent Events readers (0: none).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) filtered_sse: usize,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Scenario 7's load generator: key-filtered subscribers of `topic` (driven over stdin).
    Subscribers {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        topic: String,
        /// The first subscriber's number (subscriber n reads key n % 1,000).
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        per_connection: usize,
        /// Server-Sent Events streams instead of WebSocket subscriptions (one per connection).
        #[arg(long)]
        sse: bool,
    },
    /// A bare tokio-tungstenite echo server: the practical limit for scenario 2.
    EchoServer {
        #[arg(long)]
        port: u16,
    },
    /// Pingora's HTTP proxy with nothing of the gateway's: every request to one node, one
    /// worker thread. Scenario 5's middle baseline, between nginx and the gateway.
    BarePingora {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        node: SocketAddr,
        /// Also do what any proxy must and the gateway does per request: send the four
        /// forwarding headers and bound upstream connects, reads and writes with timeouts.
        #[arg(long)]
        duties: bool,
    },
}

pub(crate) fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::EchoServer { port }) => {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(echo_server(port));
        }
        Some(Cmd::BarePingora {
            listen,
            node,
            duties,
        }) => bare_pingora(listen, node, duties),
        Some(Cmd::Subscribers {
            addr,
            topic,
            first,
            count,
            per_connection,
            sse,
        }) => {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(subscribers_process(
                    addr,
                    topic,
                    first,
                    count,
                    per_connection.max(1),
                    sse,
                ));
        }
        None => {}
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_all(cli))
}

async fn run_all(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let wanted = |n: u8| cli.only.is_empty() || cli.only.contains(&n);
    let gateway_bin = std::fs::canonicalize(&cli.gateway).map_err(|e| {
        format!(
            "{}: {e} (build it with cargo build --release)",
            cli.gateway.display()
        )
    })?;
    let mut report = Report::default();
    progress("starting the broker");
    let broker = Broker::start().await;
    let started = Instant::now();
    if wanted(1) {
        consume_throughput(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(2) {
        ping_overhead(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(3) {
        fan_out(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(4) {
        connection_cost(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(5) {
        http_proxying(&cli, &gateway_bin, &mut report).await?;
    }
    if wanted(6) {
        push_vs_pull(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    if wanted(7) {
        filtered_subscribers(&cli, &gateway_bin, &broker, &mut report).await?;
    }
    let table = report.markdown();
    println!("\n{table}");
    println!(
        "medians of {} repetitions, (min–max); total {:.0} s",
        cli.reps,
        started.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all("target").ok();
    std::fs::write("target/bench-results.md", &table).ok();
    Ok(())
}
